// Package expose serves the websites Layerfiles publish with EXPOSE
// WEBSITE: several lines of one Layerfile form one site on a loopback port,
// routed to their guest ports by the longest matching path prefix, with
// the matched prefix replaced by the rewrite when one is given.
package expose

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"time"
)

// Route sends requests under Path to Backend ("127.0.0.1:PORT", a host
// forward to the guest port).
type Route struct {
	Path    string // prefix, "/" by default
	Rewrite string // replaces Path in the forwarded request, "" keeps it
	Scheme  string // backend scheme: http or https
	Backend string
}

// Handler routes by longest path prefix.
func Handler(routes []Route) http.Handler {
	rs := append([]Route(nil), routes...)
	for i := range rs {
		if rs[i].Path == "" {
			rs[i].Path = "/"
		}
		if rs[i].Scheme == "" {
			rs[i].Scheme = "http"
		}
	}
	sort.SliceStable(rs, func(i, j int) bool { return len(rs[i].Path) > len(rs[j].Path) })
	insecure := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // the guest's own certificate
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		for _, r := range rs {
			if !matches(req.URL.Path, r.Path) {
				continue
			}
			target := &url.URL{Scheme: r.Scheme, Host: r.Backend}
			proxy := &httputil.ReverseProxy{
				Rewrite: func(pr *httputil.ProxyRequest) {
					pr.SetURL(target)
					pr.SetXForwarded()
					if r.Rewrite != "" {
						rest := strings.TrimPrefix(req.URL.Path, strings.TrimSuffix(r.Path, "/"))
						p := strings.TrimSuffix(r.Rewrite, "/") + "/" + strings.TrimPrefix(rest, "/")
						pr.Out.URL.Path, pr.Out.URL.RawPath = p, ""
					} else {
						pr.Out.URL.Path, pr.Out.URL.RawPath = req.URL.Path, req.URL.RawPath
					}
				},
			}
			if r.Scheme == "https" {
				proxy.Transport = insecure
			}
			proxy.ServeHTTP(w, req)
			return
		}
		http.NotFound(w, req)
	})
}

// matches reports whether path is under prefix (at a segment boundary).
func matches(path, prefix string) bool {
	if prefix == "/" {
		return true
	}
	p := strings.TrimSuffix(prefix, "/")
	return path == p || strings.HasPrefix(path, p+"/")
}

// Serve listens on addr (loopback; "127.0.0.1:0" picks a port), calls ready
// with the site's URL, and serves until ctx ends.
func Serve(ctx context.Context, addr string, routes []Route, ready func(url string)) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("serve %s: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("serve %s: only loopback addresses are allowed", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve %s: %w", addr, err)
	}
	srv := &http.Server{Handler: Handler(routes), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	ready("http://" + ln.Addr().String() + "/")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
