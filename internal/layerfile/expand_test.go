package layerfile

import "testing"

func TestExpandValue(t *testing.T) {
	env := map[string]string{"PATH": "/usr/bin", "HOME": "/root", "EMPTY": "", "GOPATH": "/go"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct{ raw, want string }{
		{"plain", "plain"},
		{"/x/bin:$PATH", "/x/bin:/usr/bin"},
		{"$GOPATH/bin:/usr/local/go/bin:$PATH", "/go/bin:/usr/local/go/bin:/usr/bin"},
		{"${HOME}/.npm", "/root/.npm"},
		{`"two words"`, "two words"},
		{`"$HOME dir"`, "/root dir"},
		{`'$HOME'`, "$HOME"},
		{`\$HOME`, "$HOME"},
		{`a\ b`, "a b"},
		{`"a\"b\\c\d"`, `a"b\c\d`},
		{"$UNSET", ""},
		{"${UNSET:-fallback}", "fallback"},
		{"${EMPTY:-fallback}", "fallback"},
		{"${EMPTY-fallback}", ""},
		{"${HOME:+set}", "set"},
		{"${UNSET+set}", ""},
		{"${UNSET:-$HOME/x}", "/root/x"},
		{"cost: $5", "cost: $5"},
		{"100$", "100$"},
		{"${", "${"},
		{"--max-old-space-size=8192", "--max-old-space-size=8192"},
		{`'unterminated`, "unterminated"},
	}
	for _, tc := range tests {
		if got := ExpandValue(tc.raw, lookup); got != tc.want {
			t.Errorf("ExpandValue(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestForegroundServer(t *testing.T) {
	tests := []struct{ cmd, want string }{
		{"npm start", "npm start"},
		{"cd app && npm start", "npm start"},
		{"python3 -m http.server 8000", "python3 -m http.server 8000"},
		{"python3 -m http.server 8000& sleep 2", ""},
		{"python3 -m http.server 8000 &", ""},
		{"rails s -b 0.0.0.0", "rails s -b 0.0.0.0"},
		{"bundle exec rails server", "bundle exec rails server"},
		{"yarn start", "yarn start"},
		{"FLASK_APP=app.py flask run", "flask run"},
		{"sudo -E npm run dev", "npm run dev"},
		{"docker-compose up", "docker-compose up"},
		{"docker-compose up -d", ""},
		{"npm install && npm run build", ""},
		{"echo 'npm start'", ""},
		{"make # npm start", ""},
		{"npm start 2>&1 | tee log", "npm start 2>&1"},
		{"npm test", ""},
	}
	for _, tc := range tests {
		if got := ForegroundServer(tc.cmd); got != tc.want {
			t.Errorf("ForegroundServer(%q) = %q, want %q", tc.cmd, got, tc.want)
		}
	}
}

func TestServerWarnings(t *testing.T) {
	src := "FROM vm/debian:12\nRUN npm start\nRUN BACKGROUND npm start\nRUN python3 -m http.server 80& sleep 1\nEXPOSE WEBSITE localhost:3000\nRUN npm start\n"
	_, ds := Parse("L", []byte(src))
	if len(ds) != 1 {
		t.Fatalf("got %v, want one warning", ds)
	}
	want := `L:2:1: warning: "npm start" starts a server in the foreground: this step never ends, so EXPOSE WEBSITE (line 5) is never reached (hint: RUN BACKGROUND npm start)`
	if ds[0].String() != want {
		t.Errorf("got  %s\nwant %s", ds[0], want)
	}
}

func TestMemoryAfterRun(t *testing.T) {
	_, ds := Parse("L", []byte("FROM vm/debian:12\nMEMORY 1G\nCOPY . .\nRUN make\nMEMORY 4G\n"))
	want := "L:5:1: warning: MEMORY after the first RUN (line 4): the VM is already running with the memory set before it (hint: move MEMORY 4G above line 4)"
	if len(ds) != 1 || ds[0].String() != want {
		t.Errorf("got %v\nwant %s", ds, want)
	}
}

func TestPrintTrailingBackslash(t *testing.T) {
	f, ds := Parse("L", []byte("FROM vm/debian:12\nENV A=x\\\\ # one backslash\nRUN next\n"))
	if len(ds) != 0 {
		t.Fatal(ds)
	}
	if got, want := f.String(), "FROM vm/debian:12\nENV A=x\\\\ #\nRUN next\n"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	roundTrip(t, f)
}

func TestPrintCanonical(t *testing.T) {
	src := `# comment
FROM ../base # parent
RUN apt-get install \
    curl
RUN BACKGROUND python3 -m http.server 80
COPY "my file" b /dest/
COPY --weird ./
ENV A=1 B="x y"
ENV LEGACY hello world
BUILD ENV GIT_BRANCH
SECRET ENV TOKEN
WORKDIR "/a b"
USER app
CACHE ~/.npm
CHECKPOINT disabled
CHECKPOINT
CHECKPOINT named
SKIP REMAINING IF A=~"~x" AND B!="a b" AND C==
SPLIT UNORDERED 3
EXPOSE WEBSITE localhost
EXPOSE WEBSITE 8080 /api /
EXPOSE TCP 5432 15432
WAIT /a
BUTTON ok? # yes
MEMORY 1536M
LABEL display_name="my app"
SETUP FILE /etc/env
CLONE https://x/y DEFAULT=main "DEFAULT=odd" /d/
`
	f, _ := Parse("L", []byte(src))
	want := `FROM ../base
RUN apt-get install     curl
RUN BACKGROUND python3 -m http.server 80
COPY "my file" b /dest/
ENV A=1 B="x y"
ENV LEGACY hello world
BUILD ENV GIT_BRANCH
SECRET ENV TOKEN
WORKDIR "/a b"
USER app
CACHE ~/.npm
CHECKPOINT disabled
CHECKPOINT
CHECKPOINT named
SKIP REMAINING IF A=~"~x" AND B!="a b" AND C==
SPLIT UNORDERED 3
EXPOSE WEBSITE http://localhost:80
EXPOSE WEBSITE http://localhost:8080 /api /
EXPOSE TCP 5432 15432
WAIT /a
BUTTON ok? # yes
MEMORY 1536M
LABEL display_name="my app"
SETUP FILE /etc/env
CLONE https://x/y DEFAULT=main "DEFAULT=odd" /d/
`
	if got := f.String(); got != want {
		t.Errorf("String():\n%s\nwant:\n%s", got, want)
	}
	roundTrip(t, f)
}
