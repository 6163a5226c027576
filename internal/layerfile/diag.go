package layerfile

import (
	"cmp"
	"slices"
)

// Severity is how bad a Diagnostic is.
type Severity int

// Severities.
const (
	// Error makes the Layerfile unusable: a run fails before any VM starts.
	Error Severity = iota
	// Warning is likely a mistake but the Layerfile runs.
	Warning
)

// String returns "error" or "warning".
func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// Diagnostic is one problem found in a Layerfile.
type Diagnostic struct {
	Pos      Pos
	Severity Severity
	Message  string
	// Hint is a likely fix, often the corrected line; "" when none.
	Hint string
}

// String formats d as "path:line:col: error: message (hint: ...)".
func (d Diagnostic) String() string {
	s := d.Pos.String() + ": " + d.Severity.String() + ": " + d.Message
	if d.Hint != "" {
		s += " (hint: " + d.Hint + ")"
	}
	return s
}

// HasErrors reports whether any diagnostic is an Error.
func HasErrors(ds []Diagnostic) bool {
	for _, d := range ds {
		if d.Severity == Error {
			return true
		}
	}
	return false
}

// SortDiagnostics orders ds by file, line, column, then severity and message.
func SortDiagnostics(ds []Diagnostic) {
	slices.SortStableFunc(ds, func(a, b Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Col, b.Pos.Col),
			cmp.Compare(a.Severity, b.Severity),
			cmp.Compare(a.Message, b.Message),
		)
	})
}
