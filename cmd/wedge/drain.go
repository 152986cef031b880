package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// drain marks a cluster node draining (or active again with --undo)
// through any node's API.
func drain(args []string) error {
	fs := flag.NewFlagSet("wedge drain", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wedge drain [--api URL] [--admin-token-file FILE] [--undo] NODE

Marks cluster node NODE draining: it keeps the clients it has and, once the
XDP front uses membership, takes no new ones. The mark is kept in etcd
until --undo, across restarts of the node. Any node's API can do it.

`)
		fs.PrintDefaults()
	}
	api := fs.String("api", "http://127.0.0.1:8080", "any cluster node's API base `URL`")
	undo := fs.Bool("undo", false, "make NODE active again")
	tokenFile := adminTokenFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	tok, err := adminToken(*tokenFile)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return fmt.Errorf("drain: want exactly one NODE")
	}
	node := fs.Arg(0)
	method := http.MethodPost
	if *undo {
		method = http.MethodDelete
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := strings.TrimSuffix(*api, "/") + "/v1/nodes/" + url.PathEscape(node) + "/drain"
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	setBearer(req, tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusNoContent {
		return adminHint(fmt.Errorf("drain: %s: %s", resp.Status, strings.TrimSpace(string(body))))
	}
	if *undo {
		fmt.Printf("%s is active again\n", node)
	} else {
		fmt.Printf("%s is draining: it keeps its clients and takes no new ones\n", node)
	}
	return nil
}
