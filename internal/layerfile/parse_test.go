package layerfile

import (
	"reflect"
	"strings"
	"testing"
)

// parseOne parses "FROM vm/debian:12" followed by src and returns the
// instruction(s) src produced.
func parseBody(t *testing.T, src string) ([]*Instruction, []Diagnostic) {
	t.Helper()
	f, ds := Parse("Layerfile", []byte("FROM vm/debian:12\n"+src))
	if f == nil {
		t.Fatal("Parse returned a nil File")
	}
	if len(f.Instructions) == 0 || f.Instructions[0].Kind != From {
		return f.Instructions, ds
	}
	return f.Instructions[1:], ds
}

// args returns the one non-nil argument struct of in, for comparisons.
func args(in *Instruction) any {
	for _, v := range []any{in.From, in.Run, in.Copy, in.Env, in.Names, in.Path, in.Paths, in.Checkpoint,
		in.Skip, in.Split, in.Website, in.TCP, in.Button, in.Memory, in.Label, in.Clone} {
		if !reflect.ValueOf(v).IsNil() {
			return v
		}
	}
	return nil
}

func TestValidDirectives(t *testing.T) {
	tests := []struct {
		src  string
		kind Kind
		want any
		text string // expected Text; "" means the trimmed source line
	}{
		// RUN family: the command is the rest of the line, '#' included.
		{"RUN echo hi", Run, &RunArgs{Command: "echo hi"}, ""},
		{"RUN   echo \"hi!!\"  # not a comment  ", Run, &RunArgs{Command: `echo "hi!!"  # not a comment`}, `RUN   echo "hi!!"  # not a comment`},
		{"\t  RUN make", Run, &RunArgs{Command: "make"}, "RUN make"},
		{"RUN BACKGROUND python3 -m http.server 8000", RunBackground, &RunArgs{Command: "python3 -m http.server 8000"}, ""},
		{"RUN REPEATABLE docker build -t app .", RunRepeatable, &RunArgs{Command: "docker build -t app ."}, ""},
		{"RUN BACKGROUNDER", Run, &RunArgs{Command: "BACKGROUNDER"}, ""},
		// COPY
		{"COPY . .", Copy, &CopyArgs{Sources: []string{"."}, Dest: "."}, ""},
		{"COPY / /root", Copy, &CopyArgs{Sources: []string{"/"}, Dest: "/root"}, ""},
		{`COPY "my file.txt" 'other file' /dest/ # two files`, Copy, &CopyArgs{Sources: []string{"my file.txt", "other file"}, Dest: "/dest/"}, `COPY "my file.txt" 'other file' /dest/`},
		{`COPY a\ b c#d e/`, Copy, &CopyArgs{Sources: []string{"a b", "c#d"}, Dest: "e/"}, ""},
		// ENV
		{"ENV NODE_OPTIONS=--max-old-space-size=8192", Env, &EnvArgs{Pairs: []EnvPair{{"NODE_OPTIONS", "--max-old-space-size=8192"}}}, ""},
		{`ENV A=1 B="two words" C='$x' # set`, Env, &EnvArgs{Pairs: []EnvPair{{"A", "1"}, {"B", `"two words"`}, {"C", `'$x'`}}}, `ENV A=1 B="two words" C='$x'`},
		{"ENV PATH $GOPATH/bin:/usr/local/go/bin:$PATH", Env, &EnvArgs{Pairs: []EnvPair{{"PATH", "$GOPATH/bin:/usr/local/go/bin:$PATH"}}}, ""},
		{"ENV GREETING hello   world", Env, &EnvArgs{Pairs: []EnvPair{{"GREETING", "hello   world"}}}, ""},
		{"ENV EMPTY=", Env, &EnvArgs{Pairs: []EnvPair{{"EMPTY", ""}}}, ""},
		// BUILD ENV, SECRET ENV
		{"BUILD ENV GIT_BRANCH NODE_ENV", BuildEnv, &NamesArgs{Names: []string{"GIT_BRANCH", "NODE_ENV"}}, ""},
		{"SECRET ENV CYPRESS_RECORD_KEY # from the dashboard", SecretEnv, &NamesArgs{Names: []string{"CYPRESS_RECORD_KEY"}}, "SECRET ENV CYPRESS_RECORD_KEY"},
		// WORKDIR, USER
		{"WORKDIR /app", Workdir, &PathArgs{Path: "/app"}, ""},
		{"WORKDIR ../docker-dashboard-server", Workdir, &PathArgs{Path: "../docker-dashboard-server"}, ""},
		{`WORKDIR "/my dir"`, Workdir, &PathArgs{Path: "/my dir"}, ""},
		{"USER app", User, &PathArgs{Path: "app"}, ""},
		// CACHE, WAIT, SETUP FILE
		{"CACHE ~/.npm ~/.cache/Cypress", Cache, &PathsArgs{Paths: []string{"~/.npm", "~/.cache/Cypress"}}, ""},
		{"WAIT /service-one /service-two", Wait, &PathsArgs{Paths: []string{"/service-one", "/service-two"}}, ""},
		{"SETUP FILE /root/.env # sourced", SetupFile, &PathsArgs{Paths: []string{"/root/.env"}}, "SETUP FILE /root/.env"},
		// CHECKPOINT
		{"CHECKPOINT", Checkpoint, &CheckpointArgs{}, ""},
		{"CHECKPOINT deps-ready", Checkpoint, &CheckpointArgs{Name: "deps-ready"}, ""},
		{"CHECKPOINT disabled", Checkpoint, &CheckpointArgs{Disabled: true}, ""},
		{"CHECKPOINT # here", Checkpoint, &CheckpointArgs{}, "CHECKPOINT"},
		// SKIP REMAINING IF
		{"SKIP REMAINING IF LAYERCI_BRANCH=master", SkipRemainingIf, &SkipArgs{Conds: []Cond{{"LAYERCI_BRANCH", "=", "master"}}}, ""},
		{"SKIP REMAINING IF DEPLOY_TARGET='main'", SkipRemainingIf, &SkipArgs{Conds: []Cond{{"DEPLOY_TARGET", "=", "main"}}}, ""},
		{`SKIP REMAINING IF A!=x AND B=~^v[0-9]+ AND C!=~"a b" AND D="#1"`, SkipRemainingIf, &SkipArgs{Conds: []Cond{
			{"A", "!=", "x"}, {"B", "=~", "^v[0-9]+"}, {"C", "!=~", "a b"}, {"D", "=", "#1"}}}, ""},
		// SPLIT
		{"SPLIT 5", Split, &SplitArgs{N: 5}, ""},
		{"SPLIT UNORDERED 2 # two", Split, &SplitArgs{N: 2, Unordered: true}, "SPLIT UNORDERED 2"},
		// EXPOSE WEBSITE
		{"EXPOSE WEBSITE localhost", ExposeWebsite, &WebsiteArgs{Scheme: "http", Port: 80, Path: "/"}, ""},
		{"EXPOSE WEBSITE localhost:8080", ExposeWebsite, &WebsiteArgs{Scheme: "http", Port: 8080, Path: "/"}, ""},
		{"EXPOSE WEBSITE http://localhost:3000 /docker-dashboard", ExposeWebsite, &WebsiteArgs{Scheme: "http", Port: 3000, Path: "/docker-dashboard"}, ""},
		{"EXPOSE WEBSITE https://localhost", ExposeWebsite, &WebsiteArgs{Scheme: "https", Port: 443, Path: "/"}, ""},
		{"EXPOSE WEBSITE HTTPS://LOCALHOST:8443/", ExposeWebsite, &WebsiteArgs{Scheme: "https", Port: 8443, Path: "/"}, ""},
		{"EXPOSE WEBSITE 9000 /api / # api", ExposeWebsite, &WebsiteArgs{Scheme: "http", Port: 9000, Path: "/api", Rewrite: "/"}, "EXPOSE WEBSITE 9000 /api /"},
		// EXPOSE TCP
		{"EXPOSE TCP 5432", ExposeTCP, &TCPArgs{GuestPort: 5432}, ""},
		{"EXPOSE TCP 5432 15432", ExposeTCP, &TCPArgs{GuestPort: 5432, HostPort: 15432}, ""},
		// BUTTON keeps '#'
		{"BUTTON would you like to deploy? # yes", Button, &ButtonArgs{Message: "would you like to deploy? # yes"}, ""},
		// MEMORY
		{"MEMORY 2G", Memory, &MemoryArgs{Bytes: 2 << 30}, ""},
		{"MEMORY 512M", Memory, &MemoryArgs{Bytes: 512 << 20}, ""},
		{"MEMORY 1048576K", Memory, &MemoryArgs{Bytes: 1 << 30}, ""},
		{"MEMORY 4g", Memory, &MemoryArgs{Bytes: 4 << 30}, ""},
		{"MEMORY 268435456", Memory, &MemoryArgs{Bytes: 256 << 20}, ""},
		// LABEL
		{"LABEL display_name=hello", Label, &LabelArgs{Key: "display_name", Value: "hello"}, ""},
		{`LABEL display_name="Unit tests" # shown in the UI`, Label, &LabelArgs{Key: "display_name", Value: "Unit tests"}, `LABEL display_name="Unit tests"`},
		{"LABEL status=merge", Label, &LabelArgs{Key: "status", Value: "merge"}, ""},
		{"LABEL status=hidden", Label, &LabelArgs{Key: "status", Value: "hidden"}, ""},
		// CLONE
		{"CLONE https://github.com/org/repo /src", Clone, &CloneArgs{URL: "https://github.com/org/repo", Dest: "/src"}, ""},
		{"CLONE git@github.com:org/repo.git DEFAULT=develop api web /src/", Clone, &CloneArgs{URL: "git@github.com:org/repo.git", Default: "develop", Sources: []string{"api", "web"}, Dest: "/src/"}, ""},
		{"CLONE https://x/y.git DEFAULT=main docs /docs", Clone, &CloneArgs{URL: "https://x/y.git", Default: "main", Sources: []string{"docs"}, Dest: "/docs"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			insts, ds := parseBody(t, tc.src+"\n")
			for _, d := range ds {
				t.Errorf("unexpected diagnostic: %s", d)
			}
			if len(insts) != 1 {
				t.Fatalf("got %d instructions, want 1", len(insts))
			}
			in := insts[0]
			if in.Kind != tc.kind {
				t.Errorf("Kind = %v, want %v", in.Kind, tc.kind)
			}
			if got := args(in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("args = %#v, want %#v", got, tc.want)
			}
			wantText := tc.text
			if wantText == "" {
				wantText = strings.TrimSpace(tc.src)
			}
			if in.Text != wantText {
				t.Errorf("Text = %q, want %q", in.Text, wantText)
			}
			if in.Source != tc.src {
				t.Errorf("Source = %q, want %q", in.Source, tc.src)
			}
			wantCol := len(tc.src) - len(strings.TrimLeft(tc.src, " \t")) + 1
			if in.Pos != (Pos{File: "Layerfile", Line: 2, Col: wantCol}) {
				t.Errorf("Pos = %v, want Layerfile:2:%d", in.Pos, wantCol)
			}
		})
	}
}

func TestFromForms(t *testing.T) {
	tests := []struct {
		src  string
		want FromArgs
	}{
		{"FROM vm/debian:12", FromArgs{Form: FromVM, Image: "vm/debian:12"}},
		{"FROM vm/ubuntu:18.04 # base", FromArgs{Form: FromVM, Image: "vm/ubuntu:18.04"}},
		{"FROM ../base", FromArgs{Form: FromPath, Path: "../base"}},
		{"FROM /base/Layerfile", FromArgs{Form: FromPath, Path: "/base/Layerfile"}},
		{"FROM /Layerfile", FromArgs{Form: FromPath, Path: "/Layerfile"}},
		{"FROM ./b", FromArgs{Form: FromPath, Path: "./b"}},
		{"FROM webapp.io/base:latest", FromArgs{Form: FromLibrary, Image: "webapp.io/base:latest"}},
		{"FROM ConnorMacKenzieLayer/test:v2", FromArgs{Form: FromLibrary, Image: "ConnorMacKenzieLayer/test:v2"}},
	}
	for _, tc := range tests {
		f, ds := Parse("L", []byte(tc.src))
		if len(ds) != 0 {
			t.Errorf("%q: unexpected diagnostics %v", tc.src, ds)
			continue
		}
		if len(f.Instructions) != 1 || f.Instructions[0].From == nil {
			t.Errorf("%q: got %d instructions", tc.src, len(f.Instructions))
			continue
		}
		if got := *f.Instructions[0].From; got != tc.want {
			t.Errorf("%q: From = %+v, want %+v", tc.src, got, tc.want)
		}
	}
}

// TestErrors pins the exact message, hint and position of invalid forms.
// The sources start at line 2 (line 1 is FROM vm/debian:12) unless they
// start with "FROM" themselves.
func TestErrors(t *testing.T) {
	tests := []struct {
		src  string
		want string // Diagnostic.String() with file "L"
	}{
		{"EXPOSE WEBSITE http://localhost:9000/app",
			`L:2:16: error: the location "http://localhost:9000/app" contains a path (hint: put the path in its own argument: EXPOSE WEBSITE localhost:9000 /app)`},
		{"EXPOSE WEBSITE example.com:80",
			`L:2:16: error: EXPOSE WEBSITE publishes a port of this VM: the host must be localhost, found "example.com" (hint: EXPOSE WEBSITE localhost:80 (the server must listen inside this VM))`},
		{"EXPOSE WEBSITE https://localhost : 443",
			`L:2:34: error: the path ":" must start with / (hint: remove the blanks around ':': EXPOSE WEBSITE https://localhost:443)`},
		{"EXPOSE WEBSITE localhost:99999",
			`L:2:16: error: bad port "99999" (hint: ports are 1 to 65535, e.g. localhost:8080)`},
		{"EXPOSE WEBSITE localhost:80 api",
			`L:2:29: error: the path "api" must start with / (hint: paths start with /: EXPOSE WEBSITE localhost:80 /api)`},
		{"EXPOSE 80",
			`L:2:1: error: EXPOSE <port> is Dockerfile syntax (hint: EXPOSE WEBSITE localhost:80 for a web preview, or EXPOSE TCP 80 for a raw port)`},
		{"EXPOSE website localhost",
			`L:2:8: error: keywords are upper-case: "website" (hint: write EXPOSE WEBSITE)`},
		{"EXPOSE TCP 70000",
			`L:2:12: error: bad port "70000" (hint: ports are 1 to 65535)`},
		{"CMD [\"http-server\", \"-p\", \"80\"]",
			`L:2:1: error: CMD is a Dockerfile directive; Layerfiles have no CMD (hint: to start it in the VM: RUN BACKGROUND http-server -p 80)`},
		{"ENTRYPOINT /start.sh",
			`L:2:1: error: ENTRYPOINT is a Dockerfile directive; Layerfiles have no ENTRYPOINT (hint: to start it in the VM: RUN BACKGROUND /start.sh)`},
		{"ARG VERSION=1",
			`L:2:1: error: ARG is a Dockerfile directive; Layerfiles have no ARG (hint: use ENV NAME=value, and BUILD ENV NAME to make the cache depend on a variable's value)`},
		{"run echo hi",
			`L:2:1: error: keywords are upper-case: "run" (hint: write RUN)`},
		{"Copy . .",
			`L:2:1: error: keywords are upper-case: "Copy" (hint: write COPY)`},
		{"skip remaining if A=b",
			`L:2:1: error: keywords are upper-case: "skip" (hint: write SKIP)`},
		{"SKIP remaining IF A=b",
			`L:2:6: error: keywords are upper-case: expected "SKIP REMAINING IF" (hint: write SKIP REMAINING IF)`},
		{"THEN RUN make",
			`L:2:1: error: THEN is an old Layerfile syntax that is no longer supported (hint: drop THEN: RUN make)`},
		{"RUNN make",
			`L:2:1: error: unknown directive "RUNN" (hint: did you mean RUN?)`},
		{"WORKDIRR /app",
			`L:2:1: error: unknown directive "WORKDIRR" (hint: did you mean WORKDIR?)`},
		{"echo hello",
			`L:2:1: error: unknown directive "echo" (hint: to run a shell command, write RUN echo hello)`},
		{"MEMORY 2GB",
			`L:2:9: error: bad memory unit "GB": expected K, M or G (hint: MEMORY 2G)`},
		{"MEMORY 2T",
			`L:2:9: error: bad memory unit "T": expected K, M or G (hint: units are K, M and G (powers of 1024), e.g. MEMORY 4G)`},
		{"MEMORY 2048",
			`L:2:8: error: memory size "2048" is 2048 bytes, too small for a VM (at least 128M) (hint: MEMORY 2048M)`},
		{"MEMORY lots",
			`L:2:8: error: bad memory size "lots": expected <n>K, <n>M or <n>G (hint: MEMORY 4G)`},
		{"SPLIT",
			`L:2:6: error: SPLIT needs the number of copies (hint: SPLIT 2)`},
		{"SPLIT UNORDERED",
			`L:2:16: error: SPLIT UNORDERED needs the number of copies (hint: SPLIT UNORDERED 2)`},
		{"SPLIT many",
			`L:2:7: error: SPLIT needs the number of copies, found "many" (hint: SPLIT 2)`},
		{"SPLIT 0",
			`L:2:7: error: SPLIT: number of copies must be 1 to 1000, found 0 (hint: SPLIT 2)`},
		{"SKIP REMAINING IF AND A=1",
			`L:2:19: error: AND must join two conditions; none comes before it (hint: SKIP REMAINING IF GIT_BRANCH!=main AND GIT_TAG=~^v)`},
		{"SKIP REMAINING IF A=1 AND",
			`L:2:23: error: AND at the end: expected a condition after it (hint: SKIP REMAINING IF GIT_BRANCH!=main AND GIT_TAG=~^v)`},
		{"SKIP REMAINING IF A=1 AND AND B=2",
			`L:2:27: error: AND must join two conditions; found AND AND (hint: SKIP REMAINING IF GIT_BRANCH!=main AND GIT_TAG=~^v)`},
		{"SKIP REMAINING IF A=1 B=2",
			`L:2:23: error: expected AND between conditions (hint: join conditions with AND: A=1 AND B=2)`},
		{"SKIP REMAINING IF A=1 OR B=2",
			`L:2:23: error: only AND can join conditions, found "OR" (hint: for "or", use one SKIP REMAINING IF line per alternative)`},
		{"SKIP REMAINING IF A=1 and B=2",
			`L:2:23: error: keywords are upper-case: "and" (hint: write AND)`},
		{"SKIP REMAINING IF",
			`L:2:18: error: SKIP REMAINING IF needs a condition (hint: SKIP REMAINING IF GIT_BRANCH!=main AND GIT_TAG=~^v)`},
		{"SKIP REMAINING IF A=~(",
			`L:2:22: error: bad regular expression "(": error parsing regexp: missing closing ): ` + "`(`" + ` (hint: the pattern is an RE2 regular expression)`},
		{"SKIP REMAINING IF branch",
			`L:2:19: error: bad condition "branch" (hint: conditions are NAME=value, NAME!=value, NAME=~regexp or NAME!=~regexp)`},
		{"COPY a b c",
			`L:2:10: error: with 2 sources the destination must be a folder ending in / (hint: COPY a b c/)`},
		{"COPY onlyone",
			`L:2:13: error: COPY needs a source and a destination (hint: COPY onlyone .)`},
		{"COPY --chown=app . .",
			`L:2:6: error: COPY has no options (--chown=app is Dockerfile syntax) (hint: remove --chown=app; files are owned by the current USER)`},
		{`COPY "a b c`,
			`L:2:6: error: unterminated " quote (hint: close the quote, or escape it with a backslash)`},
		{"ENV A=hello world",
			`L:2:13: error: expected NAME=value, found "world" (hint: quote a value with spaces: A="hello world")`},
		{"ENV 1A=x",
			`L:2:5: error: bad variable name "1A" (hint: names are letters, digits and _, not starting with a digit)`},
		{"ENV LONELY",
			`L:2:11: error: ENV LONELY needs a value (hint: ENV LONELY=value)`},
		{"SECRET ENV TOKEN=abc",
			`L:2:12: error: SECRET ENV takes variable names, not values (hint: secret values are given to strata, never written in the repository: SECRET ENV TOKEN)`},
		{"BUILD ENV A=1",
			`L:2:11: error: BUILD ENV takes variable names, not values (hint: set it with ENV A=1, then BUILD ENV A)`},
		{"BUILD A",
			`L:2:7: error: expected "BUILD ENV" (hint: write BUILD ENV ...)`},
		{"WORKDIR my dir",
			`L:2:12: error: WORKDIR takes one directory, found 2 words (hint: quote a name with spaces: WORKDIR "my dir")`},
		{"USER Admin",
			`L:2:6: error: bad user name "Admin" (hint: USER admin)`},
		{"CHECKPOINT a b",
			`L:2:14: error: CHECKPOINT takes at most one name, found 2 words (hint: CHECKPOINT, CHECKPOINT <name> or CHECKPOINT disabled)`},
		{"CHECKPOINT Disabled",
			`L:2:12: error: write "disabled" in lower case to disable checkpoints (hint: CHECKPOINT disabled)`},
		{"LABEL color=red",
			`L:2:7: error: unknown label "color": expected display_name or status (hint: LABEL display_name=<name>, or LABEL status=merge|hidden)`},
		{"LABEL status=shown",
			`L:2:14: error: bad status "shown": expected merge or hidden (hint: LABEL status=merge, or LABEL status=hidden)`},
		{"CLONE https://x/y.git",
			`L:2:22: error: CLONE needs a repository URL and a destination (hint: CLONE https://github.com/org/repo [DEFAULT=main] [<src>...] <dest>)`},
		{"CLONE https://x/y.git a DEFAULT=main /d",
			`L:2:25: error: DEFAULT= must come right after the URL (hint: CLONE https://github.com/org/repo [DEFAULT=main] [<src>...] <dest>)`},
		{"RUN",
			`L:2:4: error: RUN needs a command (hint: RUN <command>, e.g. RUN make test)`},
		{"RUN BACKGROUND   ",
			`L:2:15: error: RUN BACKGROUND needs a command (hint: RUN BACKGROUND <command>, e.g. RUN BACKGROUND make test)`},
		{"BUTTON",
			`L:2:7: error: BUTTON needs a message to show (hint: BUTTON Deploy to production?)`},
		{"SKIP REMAINING IF GIT_BRANCH=main AND LAYER_CI_BRANCH='main'",
			`L:2:39: warning: LAYER_CI_BRANCH is not set by strata or by this Layerfile; did you mean LAYERCI_BRANCH? (hint: SKIP REMAINING IF GIT_BRANCH=main AND LAYERCI_BRANCH='main')`},
		{"ENV LAYER_CI_BRANCH=x\nSKIP REMAINING IF LAYER_CI_BRANCH=x AND GIT_BRANCHES=y",
			`L:3:41: warning: GIT_BRANCHES is not set by strata or by this Layerfile; did you mean GIT_BRANCH? (hint: SKIP REMAINING IF LAYER_CI_BRANCH=x AND GIT_BRANCH=y)`},
		{"RUN BACKGROUD npm start",
			`L:2:5: warning: "BACKGROUD" looks like a misspelt RUN BACKGROUND; as written it runs as a shell command (hint: RUN BACKGROUND npm start)`},
		{"RUN REPEATABEL docker build .",
			`L:2:5: warning: "REPEATABEL" looks like a misspelt RUN REPEATABLE; as written it runs as a shell command (hint: RUN REPEATABLE docker build .)`},
		{"FROM vm/debian:12",
			`L:2:1: error: FROM repeated (the first FROM is at line 1) (hint: a Layerfile has exactly one FROM; to build on top of this one, put the rest in another Layerfile that starts with FROM <path to this one>)`},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			_, ds := Parse("L", []byte("FROM vm/debian:12\n"+tc.src+"\n"))
			if len(ds) != 1 {
				t.Fatalf("got %d diagnostics, want 1: %v", len(ds), ds)
			}
			if got := ds[0].String(); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestFromErrors covers FROM placement and forms.
func TestFromErrors(t *testing.T) {
	tests := []struct {
		src  string
		want []string
	}{
		{"", []string{`L:1:1: error: empty Layerfile: a Layerfile starts with FROM (hint: FROM vm/debian:12, or FROM <path to a parent Layerfile>)`}},
		{"# only a comment\n\n", []string{`L:1:1: error: no instructions: a Layerfile starts with FROM (hint: FROM vm/debian:12, or FROM <path to a parent Layerfile>)`}},
		{"RUN make\n", []string{`L:1:1: error: missing FROM: a Layerfile starts with FROM (hint: add FROM vm/debian:12 (or FROM <path to a parent Layerfile>) as the first instruction)`}},
		{"# c\nENV A=1\nFROM vm/debian:12\n", []string{`L:3:1: error: FROM must be the first instruction (line 2 has ENV before it) (hint: move this FROM above line 2)`}},
		{"FROM ubuntu:18.04\n", []string{`L:1:6: error: "ubuntu:18.04" is a Docker image; a Layerfile starts from a VM image (vm/<distro>:<version>), another Layerfile, or <library>/<name>:<tag> (hint: FROM vm/ubuntu:18.04)`}},
		{"FROM vm/debian\n", []string{`L:1:6: error: bad VM image "vm/debian": expected vm/<distro>:<version> (hint: FROM vm/debian:12)`}},
		{"FROM ubuntu\n", []string{`L:1:6: error: "ubuntu" looks like a distribution name; VM images are written vm/<distro>:<version> (hint: FROM vm/ubuntu:22.04)`}},
		{"FROM\n", []string{`L:1:5: error: FROM needs a base (hint: FROM vm/debian:12, or FROM <path to a parent Layerfile>)`}},
		{"FROM a b\n", []string{`L:1:8: error: FROM takes one base, found 2 words (hint: FROM a)`}},
		{"FROM vm/debian:12\nRUN a\nFROM x\nFROM y\n", []string{
			`L:3:1: error: FROM repeated (the first FROM is at line 1) (hint: a Layerfile has exactly one FROM; to build on top of this one, put the rest in another Layerfile that starts with FROM <path to this one>)`,
			`L:4:1: error: FROM repeated (the first FROM is at line 1) (hint: a Layerfile has exactly one FROM; to build on top of this one, put the rest in another Layerfile that starts with FROM <path to this one>)`,
		}},
	}
	for _, tc := range tests {
		_, ds := Parse("L", []byte(tc.src))
		var got []string
		for _, d := range ds {
			got = append(got, d.String())
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q:\ngot  %q\nwant %q", tc.src, got, tc.want)
		}
	}
}
