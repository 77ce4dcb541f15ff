"""The default lab's two groups and two ENIs in a moto_server (argv[1]): prints the node and pod
group ids. Used by the host test ec2_rules_from_moto_judge_the_default_lab (tests/src/ec2.rs);
the addresses and rules are the default lab's (xtask/labs/default.toml)."""
import boto3, sys
url = sys.argv[1]
ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
vpc = ec2.create_vpc(CidrBlock="192.168.0.0/16")["Vpc"]["VpcId"]
sub = ec2.create_subnet(VpcId=vpc, CidrBlock="192.168.0.0/18")["Subnet"]["SubnetId"]
node = ec2.create_security_group(GroupName="sg-node", Description="node", VpcId=vpc)["GroupId"]
pod = ec2.create_security_group(GroupName="sg-pod", Description="pod", VpcId=vpc)["GroupId"]
ec2.authorize_security_group_ingress(GroupId=pod, IpPermissions=[
  {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
  {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": node}]},
])
ec2.create_network_interface(SubnetId=sub, PrivateIpAddress="192.168.3.219", Groups=[pod])
ec2.create_network_interface(SubnetId=sub, PrivateIpAddress="192.168.1.10", Groups=[node])
print(node, pod)
