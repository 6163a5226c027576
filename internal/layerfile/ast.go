package layerfile

import "fmt"

// Pos is a position in a Layerfile. Line and Col are 1-based; Col counts
// characters (Unicode code points, a tab is one), not bytes.
type Pos struct {
	File      string
	Line, Col int
}

// String formats the position as "file:line:col".
func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col) }

// File is a parsed Layerfile.
type File struct {
	Path         string
	Instructions []*Instruction
}

// Kind is the directive of an instruction.
type Kind int

// The directives of SPEC §2.
const (
	Invalid Kind = iota
	From
	Run
	RunBackground
	RunRepeatable
	Copy
	Env
	BuildEnv
	SecretEnv
	Workdir
	User
	Cache
	Checkpoint
	SkipRemainingIf
	Split
	ExposeWebsite
	ExposeTCP
	Wait
	Button
	Memory
	Label
	SetupFile
	Clone
)

var kindNames = [...]string{
	Invalid:         "INVALID",
	From:            "FROM",
	Run:             "RUN",
	RunBackground:   "RUN BACKGROUND",
	RunRepeatable:   "RUN REPEATABLE",
	Copy:            "COPY",
	Env:             "ENV",
	BuildEnv:        "BUILD ENV",
	SecretEnv:       "SECRET ENV",
	Workdir:         "WORKDIR",
	User:            "USER",
	Cache:           "CACHE",
	Checkpoint:      "CHECKPOINT",
	SkipRemainingIf: "SKIP REMAINING IF",
	Split:           "SPLIT",
	ExposeWebsite:   "EXPOSE WEBSITE",
	ExposeTCP:       "EXPOSE TCP",
	Wait:            "WAIT",
	Button:          "BUTTON",
	Memory:          "MEMORY",
	Label:           "LABEL",
	SetupFile:       "SETUP FILE",
	Clone:           "CLONE",
}

// String returns the directive's keyword as written in a Layerfile
// ("RUN BACKGROUND", "SKIP REMAINING IF").
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// IsRun reports whether k is one of RUN, RUN BACKGROUND, RUN REPEATABLE.
func (k Kind) IsRun() bool { return k == Run || k == RunBackground || k == RunRepeatable }

// Instruction is one directive with its arguments.
type Instruction struct {
	Kind Kind
	// Pos is the position of the keyword.
	Pos Pos
	// Source is the source text as written: every physical line of the
	// instruction, continuation lines and lines dropped inside a continuation
	// included, joined by "\n" (line ends are normalised to "\n", and the
	// last line end is not included).
	Source string
	// Text is the logical line after joining continuations: keyword and
	// arguments, trimmed, without a trailing comment (for directives that
	// allow one). Cache keys hash this.
	Text string

	// Exactly one of these is non-nil, matching Kind.
	From       *FromArgs       // FROM
	Run        *RunArgs        // RUN, RUN BACKGROUND, RUN REPEATABLE
	Copy       *CopyArgs       // COPY
	Env        *EnvArgs        // ENV
	Names      *NamesArgs      // BUILD ENV, SECRET ENV
	Path       *PathArgs       // WORKDIR, USER (Path is the user name)
	Paths      *PathsArgs      // CACHE, WAIT, SETUP FILE
	Checkpoint *CheckpointArgs // CHECKPOINT
	Skip       *SkipArgs       // SKIP REMAINING IF
	Split      *SplitArgs      // SPLIT
	Website    *WebsiteArgs    // EXPOSE WEBSITE
	TCP        *TCPArgs        // EXPOSE TCP
	Button     *ButtonArgs     // BUTTON
	Memory     *MemoryArgs     // MEMORY
	Label      *LabelArgs      // LABEL
	Clone      *CloneArgs      // CLONE
}

// FromForm tells the three forms of FROM apart.
type FromForm int

// Forms of FROM.
const (
	// FromVM is a base image built locally: "vm/debian:12".
	FromVM FromForm = iota + 1
	// FromPath names another Layerfile or its folder.
	FromPath
	// FromLibrary is "<library>/<name>:<tag>", resolved through the image
	// catalogue.
	FromLibrary
)

// String returns "vm", "path" or "library".
func (f FromForm) String() string {
	switch f {
	case FromVM:
		return "vm"
	case FromPath:
		return "path"
	case FromLibrary:
		return "library"
	}
	return fmt.Sprintf("FromForm(%d)", int(f))
}

// FromArgs are the arguments of FROM. Image is set for FromVM and
// FromLibrary ("vm/debian:12", "webapp.io/base:latest"); Path for FromPath,
// exactly as written ("../base", "/base/Layerfile").
type FromArgs struct {
	Form  FromForm
	Image string
	Path  string
}

// RunArgs are the arguments of RUN*: the rest of the joined line, untouched
// apart from trimming.
type RunArgs struct {
	Command string
}

// CopyArgs are the arguments of COPY, quotes removed.
type CopyArgs struct {
	Sources []string
	Dest    string
}

// EnvArgs are the assignments of one ENV line, in order.
type EnvArgs struct {
	Pairs []EnvPair
}

// EnvPair is one assignment. Value is raw: quotes and $VARs are kept, to be
// resolved with ExpandValue against the environment at that step.
type EnvPair struct {
	Key, Value string
}

// NamesArgs are the variable names of BUILD ENV and SECRET ENV.
type NamesArgs struct {
	Names []string
}

// PathArgs is the single argument of WORKDIR (a directory) or USER (a user
// name), quotes removed.
type PathArgs struct {
	Path string
}

// PathsArgs are the arguments of CACHE, WAIT and SETUP FILE, quotes removed.
type PathsArgs struct {
	Paths []string
}

// CheckpointArgs are the arguments of CHECKPOINT: bare (Name == "" and
// !Disabled), named, or "disabled".
type CheckpointArgs struct {
	Name     string
	Disabled bool
}

// SkipArgs are the conditions of SKIP REMAINING IF, joined by AND.
type SkipArgs struct {
	Conds []Cond
}

// Cond is one condition: Key Op Value, Op one of "=", "!=", "=~", "!=~".
// Value has its quotes removed; for =~ and !=~ it is an RE2 regexp that
// compiles.
type Cond struct {
	Key   string
	Op    string
	Value string
}

// SplitArgs are the arguments of SPLIT.
type SplitArgs struct {
	N         int
	Unordered bool
}

// WebsiteArgs are the arguments of EXPOSE WEBSITE. Scheme is "http" or
// "https"; Port defaults to 80 or 443; Path defaults to "/"; Rewrite is ""
// when absent.
type WebsiteArgs struct {
	Scheme  string
	Port    int
	Path    string
	Rewrite string
}

// TCPArgs are the arguments of EXPOSE TCP; HostPort is 0 when absent.
type TCPArgs struct {
	GuestPort, HostPort int
}

// ButtonArgs is the message of BUTTON.
type ButtonArgs struct {
	Message string
}

// MemoryArgs is the VM memory asked for by MEMORY, in bytes.
type MemoryArgs struct {
	Bytes int64
}

// LabelArgs is one label: Key is "display_name" or "status"; for status,
// Value is "merge" or "hidden".
type LabelArgs struct {
	Key, Value string
}

// CloneArgs are the arguments of CLONE. Default is "" when DEFAULT= is
// absent; Sources is empty when the whole repository is copied.
type CloneArgs struct {
	URL, Default string
	Sources      []string
	Dest         string
}
