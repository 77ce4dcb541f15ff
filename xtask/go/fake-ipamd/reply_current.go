//go:build !cni_v1_7

package main

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/aws/amazon-vpc-cni-k8s/rpc"
)

// The current release line: one IPAllocationMetadata per address, the route table named by
// ipamd (device number + 1 on network card 0; 1 for the primary ENI, which the plugin
// reads as the main table).
type server struct {
	pb.UnimplementedCNIBackendServer
	b *backend
}

func register(s *grpc.Server, b *backend) {
	pb.RegisterCNIBackendServer(s, &server{b: b})
}

func metadata(p *Pod) []*pb.IPAllocationMetadata {
	table := p.RouteTable
	if table == 0 {
		table = p.DeviceNumber + 1
	}
	return []*pb.IPAllocationMetadata{{IPv4Addr: p.IP, DeviceNumber: p.DeviceNumber, RouteTableId: table}}
}

func (s *server) AddNetwork(_ context.Context, r *pb.AddNetworkRequest) (*pb.AddNetworkReply, error) {
	a, p, err := s.b.lookup(r.K8S_POD_NAMESPACE, r.K8S_POD_NAME)
	s.b.record("AddNetwork", r.K8S_POD_NAMESPACE, r.K8S_POD_NAME, r.ContainerID, r.Netns, r.IfName, err)
	if err != nil {
		return nil, err
	}
	reply := &pb.AddNetworkReply{Success: true, IPAllocationMetadata: metadata(p), VPCv4CIDRs: a.VpcCidrs}
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
	return &pb.DelNetworkReply{Success: true, IPAllocationMetadata: metadata(p), PodVlanId: p.Vlan}, nil
}
