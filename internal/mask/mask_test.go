package mask

import (
	"bytes"
	"strings"
	"testing"
)

func TestWriterMasksAcrossWrites(t *testing.T) {
	m := New([]string{"hunter2", "", "s3cr3t-token"})
	var out bytes.Buffer
	w := m.Writer(&out)
	input := "user=me pass=hunter2\ntoken s3cr3t-token end"
	// Feed one byte at a time: every secret is split across writes.
	for i := 0; i < len(input); i++ {
		w.Write([]byte{input[i]})
	}
	w.Flush()
	got := out.String()
	if strings.Contains(got, "hunter2") || strings.Contains(got, "s3cr3t") {
		t.Fatalf("secret leaked: %q", got)
	}
	if want := "user=me pass=***\ntoken *** end"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if s := m.String("a hunter2 b"); s != "a *** b" {
		t.Fatalf("String = %q", s)
	}
}

func TestWriterMasksMultilineSecrets(t *testing.T) {
	key := "-----BEGIN KEY-----\nAAAABBBB\n-----END KEY-----"
	m := New([]string{key})
	var out bytes.Buffer
	w := m.Writer(&out)
	w.Write([]byte("x\n-----BEGIN KEY-----\nAAAABBBB\n"))
	w.Write([]byte("-----END KEY-----\ny\n"))
	w.Flush()
	if got := out.String(); got != "x\n***\ny\n" {
		t.Fatalf("got %q", got)
	}
}
