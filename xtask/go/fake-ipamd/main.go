// Command fake-ipamd answers the VPC CNI plugin's gRPC (rpc.CNIBackend: AddNetwork and
// DelNetwork) with the sgpath lab's assignments, in place of the aws-node DaemonSet's ipamd.
//
// It serves the same two places the real ipamd does: TCP 127.0.0.1:50051 in the namespace it
// is started in (what routed-eni-cni-plugin dials up to v1.2x) and, with -socket, a Unix
// socket (newer plugins dial /var/run/aws-node/ipamd.sock; the lab bind-mounts its own
// directory there for each plugin call). The messages are the module's own generated code
// (github.com/aws/amazon-vpc-cni-k8s/rpc) at the release it is built against: the reply's
// shape differs between releases, so reply_*.go are chosen by build tag (`cni_v1_7` for the
// v1.7 line, the current one without it).
//
// The assignments are read from -assignments (JSON, written by the lab) at every request, so
// the lab can change them between calls:
//
//	{"vpc_cidrs": ["192.168.0.0/16"],
//	 "pods": [{"namespace": "sg-test", "name": "web-0", "ip": "192.168.3.219",
//	           "vlan": 1, "eni_mac": "0a:b7:00:00:00:01", "subnet_gw": "192.168.0.1",
//	           "parent_ifindex": 5},
//	          {"namespace": "sg-test", "name": "db-0", "ip": "192.168.7.31",
//	           "device_number": 2, "route_table": 3}]}
//
// A branch pod (vlan > 0) gets PodVlanId, PodENIMAC, PodENISubnetGW and ParentIfIndex (the
// trunk's ifindex); an ordinary pod its IP, device number and route table. A pod the file
// does not name is refused, as ipamd refuses a pod it has no address for. Every request is
// appended to -log as one JSON line, so tests can check what the plugin asked.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"google.golang.org/grpc"
)

// Pod is one assignment of the lab.
type Pod struct {
	Namespace     string `json:"namespace"`
	Name          string `json:"name"`
	IP            string `json:"ip"`
	Vlan          int32  `json:"vlan"`
	EniMAC        string `json:"eni_mac"`
	SubnetGW      string `json:"subnet_gw"`
	ParentIfIndex int32  `json:"parent_ifindex"`
	DeviceNumber  int32  `json:"device_number"`
	RouteTable    int32  `json:"route_table"`
}

// Assignments is the file the lab writes.
type Assignments struct {
	VpcCidrs []string `json:"vpc_cidrs"`
	Pods     []Pod    `json:"pods"`
}

type backend struct {
	path string
	mu   sync.Mutex
	log  *os.File
}

// errUnknownPod carries the text of datastore.ErrUnknownPod, which plugins treat as
// "already deleted" on DEL.
var errUnknownPod = fmt.Errorf("datastore: unknown pod")

func (b *backend) lookup(namespace, name string) (*Assignments, *Pod, error) {
	data, err := os.ReadFile(b.path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", b.path, err)
	}
	var a Assignments
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, nil, fmt.Errorf("parsing %s: %w", b.path, err)
	}
	for i := range a.Pods {
		if a.Pods[i].Namespace == namespace && a.Pods[i].Name == name {
			return &a, &a.Pods[i], nil
		}
	}
	return &a, nil, errUnknownPod
}

func (b *backend) record(call, namespace, name, container, netns, ifname string, err error) {
	if b.log == nil {
		return
	}
	line := map[string]string{"call": call, "namespace": namespace, "name": name,
		"container_id": container, "netns": netns, "ifname": ifname}
	if err != nil {
		line["error"] = err.Error()
	}
	data, _ := json.Marshal(line)
	b.mu.Lock()
	defer b.mu.Unlock()
	_, _ = b.log.Write(append(data, '\n'))
}

func main() {
	assignments := flag.String("assignments", "", "JSON file with the lab's assignments (required)")
	listen := flag.String("listen", "127.0.0.1:50051", "TCP address to serve on (empty: none)")
	socket := flag.String("socket", "", "Unix socket to serve on as well (empty: none)")
	logPath := flag.String("log", "", "append one JSON line per request here")
	flag.Parse()
	if *assignments == "" {
		log.Fatal("-assignments is required")
	}
	b := &backend{path: *assignments}
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		b.log = f
	}
	server := grpc.NewServer()
	register(server, b)
	var listeners []net.Listener
	if *listen != "" {
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			log.Fatalf("listening on %s: %v", *listen, err)
		}
		listeners = append(listeners, l)
	}
	if *socket != "" {
		_ = os.Remove(*socket)
		l, err := net.Listen("unix", *socket)
		if err != nil {
			log.Fatalf("listening on %s: %v", *socket, err)
		}
		listeners = append(listeners, l)
	}
	if len(listeners) == 0 {
		log.Fatal("nothing to serve on: give -listen or -socket")
	}
	for _, l := range listeners {
		go func(l net.Listener) {
			if err := server.Serve(l); err != nil {
				log.Fatalf("serving on %s: %v", l.Addr(), err)
			}
		}(l)
	}
	// Tell the lab that every listener is bound.
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	server.Stop()
	if *socket != "" {
		_ = os.Remove(*socket)
	}
}
