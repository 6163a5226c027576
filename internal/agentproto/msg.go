package agentproto

import (
	"archive/tar"
	"time"
)

// ProtocolVersion is bumped on incompatible wire changes. The agent refuses
// a hello with another major version.
const ProtocolVersion = 1

// Message types (Msg.T).
//
// Host to agent: hello, exec, bg, copyin, write, read, clock, entropy,
// data, eof, cancel, resize.
// Agent to host: hello-ack, out, credit, exit, and reset (sent once when
// an agent process starts, so a host still waiting on the previous agent
// process learns that its requests will never be answered).
const (
	THello    = "hello"     // S = nonce, N = protocol version
	THelloAck = "hello-ack" // S = nonce, Info
	TReset    = "reset"     // no S; Info: the agent (re)started, earlier sessions are void
	TExec     = "exec"      // ID, Exec; then data/eof frames are stdin when Exec.Stdin
	TBg       = "bg"        // ID, Exec, Path = log path, N = grace in ms
	TCopyIn   = "copyin"    // ID, Path = dir; then data frames (a tar stream) and eof
	TWrite    = "write"     // ID, Path, Mode; then data frames and eof
	TRead     = "read"      // ID, Path; the agent answers with out frames then exit
	TClock    = "clock"     // ID, N = Unix nanoseconds
	TEntropy  = "entropy"   // ID, Data = seed
	TData     = "data"      // ID, Data: request input (stdin, tar, file contents)
	TEOF      = "eof"       // ID: end of request input
	TCancel   = "cancel"    // ID: kill the request's process group / abort it
	TResize   = "resize"    // ID, Rows, Cols: TTY window size
	TOut      = "out"       // ID, Stream (1 stdout, 2 stderr), Data
	TCredit   = "credit"    // ID, N = input bytes consumed (flow control)
	TExit     = "exit"      // ID, Code, Err: the request finished
)

// InputWindow is how many input bytes (data frames) the host may send for
// one request beyond those the agent has acknowledged with credit frames.
const InputWindow = 1 << 20

// Msg is one protocol message. Only the fields relevant to T are set.
type Msg struct {
	T      string       `json:"t"`
	S      string       `json:"s,omitempty"`  // session nonce
	ID     uint64       `json:"id,omitempty"` // request id, unique within a session
	N      int64        `json:"n,omitempty"`
	Path   string       `json:"path,omitempty"`
	Mode   uint32       `json:"mode,omitempty"`
	Stream int          `json:"stream,omitempty"`
	Code   int          `json:"code,omitempty"`
	Err    string       `json:"err,omitempty"`
	Rows   int          `json:"rows,omitempty"`
	Cols   int          `json:"cols,omitempty"`
	Exec   *ExecRequest `json:"exec,omitempty"`
	Info   *Info        `json:"info,omitempty"`
	Data   []byte       `json:"-"` // carried as raw bytes after the JSON

	// onSent, host side, runs after the request frame was sent.
	onSent func(cc *conn, id uint64, done <-chan struct{})
}

// ExecRequest describes a command for the agent to run.
type ExecRequest struct {
	// Argv is the command; Argv[0] is looked up in Env's PATH (or the
	// default PATH) unless it contains a slash.
	Argv []string `json:"argv"`
	// Env is the complete environment (KEY=VALUE). The agent adds HOME,
	// USER and LOGNAME for the target user, and a default PATH, when Env
	// does not set them.
	Env []string `json:"env,omitempty"`
	// User is a user name or numeric uid; "" means root. The command runs
	// with that user's uid, primary gid and supplementary groups.
	User string `json:"user,omitempty"`
	// Dir is the working directory; "" means the user's home (or / when
	// the home directory does not exist).
	Dir string `json:"dir,omitempty"`
	// TTY runs the command on a new pseudo-terminal (stdout and stderr
	// are both the terminal and arrive as stream 1).
	TTY  bool `json:"tty,omitempty"`
	Rows int  `json:"rows,omitempty"`
	Cols int  `json:"cols,omitempty"`
	// Resize, when set with TTY, delivers window size changes while the
	// command runs (for `strata shell`). Host side only.
	Resize <-chan WindowSize `json:"-"`
	// Stdin is set by the Client when the caller passed a stdin reader;
	// otherwise the command's stdin is /dev/null. Callers need not set it.
	Stdin bool `json:"stdin,omitempty"`
}

// WindowSize is a terminal size in characters.
type WindowSize struct{ Rows, Cols int }

// Info describes the agent and its VM.
type Info struct {
	AgentVersion string        `json:"agent_version"`
	Protocol     int           `json:"protocol"`
	Hostname     string        `json:"hostname"`
	BootID       string        `json:"boot_id"` // /proc/sys/kernel/random/boot_id
	Uptime       time.Duration `json:"uptime"`  // CLOCK_BOOTTIME of the guest
}

// DeletePAXKey is the PAX record that turns a CopyIn tar entry into a
// deletion: an entry (of any type, usually a zero-size regular file) whose
// PAXRecords contain DeletePAXKey = "1" removes the path (recursively, if it
// is a directory) instead of creating it. A missing path is not an error.
const DeletePAXKey = "STRATA.delete"

// DeleteHeader returns a tar header that deletes name when sent to CopyIn.
// Write it with tar.Writer.WriteHeader and no content.
func DeleteHeader(name string) *tar.Header {
	return &tar.Header{
		Typeflag:   tar.TypeReg,
		Name:       name,
		Mode:       0o644,
		Format:     tar.FormatPAX,
		PAXRecords: map[string]string{DeletePAXKey: "1"},
	}
}
