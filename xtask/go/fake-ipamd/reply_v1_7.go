//go:build cni_v1_7

package main

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/aws/amazon-vpc-cni-k8s/rpc"
)

// The v1.7 line: one IPv4Addr and a device number; the plugin derives the table
// (device number + 1) itself and, without external SNAT, adds one `from <pod> to <VPC CIDR>`
// rule per CIDR for a pod on a secondary ENI, as that release's ipamd made it do by default.
type server struct {
	b *backend
}

func register(s *grpc.Server, b *backend) {
	pb.RegisterCNIBackendServer(s, &server{b: b})
}

func (s *server) AddNetwork(_ context.Context, r *pb.AddNetworkRequest) (*pb.AddNetworkReply, error) {
	a, p, err := s.b.lookup(r.K8S_POD_NAMESPACE, r.K8S_POD_NAME)
	s.b.record("AddNetwork", r.K8S_POD_NAMESPACE, r.K8S_POD_NAME, r.ContainerID, r.Netns, r.IfName, err)
	if err != nil {
		return nil, err
	}
	reply := &pb.AddNetworkReply{Success: true, IPv4Addr: p.IP, DeviceNumber: p.DeviceNumber, VPCcidrs: a.VpcCidrs}
	if p.Vlan > 0 {
		reply.PodVlanId = p.Vlan
		reply.PodENIMAC = p.EniMAC
		reply.PodENISubnetGW = p.SubnetGW
		reply.ParentIfIndex = p.ParentIfIndex
	}
	return reply, nil
}

func (s *server) DelNetwork(_ context.Context, r *pb.DelNetworkRequest) (*pb.DelNetworkReply, error) {
	_, p, err := s.b.lookup(r.K8S_POD_NAMESPACE, r.K8S_POD_NAME)
	s.b.record("DelNetwork", r.K8S_POD_NAMESPACE, r.K8S_POD_NAME, r.ContainerID, "", r.IfName, err)
	if err != nil {
		return nil, err
	}
	return &pb.DelNetworkReply{Success: true, IPv4Addr: p.IP, DeviceNumber: p.DeviceNumber, PodVlanId: p.Vlan}, nil
}
