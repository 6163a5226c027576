package expose

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func backend(name string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name+" "+r.URL.Path)
	}))
}

func TestLongestPrefixAndRewrite(t *testing.T) {
	web, api := backend("web"), backend("api")
	defer web.Close()
	defer api.Close()
	host := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	site := httptest.NewServer(Handler([]Route{
		{Path: "/", Backend: host(web)},
		{Path: "/api", Rewrite: "/v1", Backend: host(api)},
		{Path: "/static/", Backend: host(api)},
	}))
	defer site.Close()
	cases := map[string]string{
		"/":            "web /",
		"/app/x":       "web /app/x",
		"/api":         "api /v1/",
		"/api/users":   "api /v1/users",
		"/apix":        "web /apix",
		"/static/a.js": "api /static/a.js",
	}
	for path, want := range cases {
		resp, err := http.Get(site.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != want {
			t.Errorf("GET %s = %q, want %q", path, body, want)
		}
	}
}
