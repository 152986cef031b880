package cluster

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ErrServiceKey: this node's service key is not the cluster's.
var ErrServiceKey = errors.New("cluster: service key mismatch")

// CheckServiceKey makes sure every node of the cluster runs with the same
// service key. The private key never goes to etcd; the first node to start
// records the public key, and a node whose key differs is refused with an
// error that says so (its clients' handshakes would fail on it).
func CheckServiceKey(ctx context.Context, cli *clientv3.Client, prefix string, pub wgtypes.Key) error {
	key := prefix + "service/public_key"
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, pub.String())).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: etcd: %w", err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return fmt.Errorf("cluster: service key record vanished; try again")
	}
	if got := string(kvs[0].Value); got != pub.String() {
		return fmt.Errorf("%w: this node's service key (public %s) is not the cluster's (public %s): "+
			"every node must run with the same --service-key file", ErrServiceKey, pub, got)
	}
	return nil
}
