package cachekey

import "testing"

func TestChainChangesWithEveryPart(t *testing.T) {
	base := Base("img1", "qemu-7.2 tcg 2048M")
	k := base.Step("RUN echo hi", nil, "")
	cases := map[string]Chain{
		"other image":       Base("img2", "qemu-7.2 tcg 2048M").Step("RUN echo hi", nil, ""),
		"other machine":     Base("img1", "qemu-7.2 tcg 4096M").Step("RUN echo hi", nil, ""),
		"other instruction": base.Step("RUN echo ho", nil, ""),
		"build env":         base.Step("RUN echo hi", map[string]string{"A": "1"}, ""),
		"secret":            base.Step("RUN echo hi", nil, "d"),
		"earlier step":      base.Step("ENV A=1", nil, "").Step("RUN echo hi", nil, ""),
	}
	for name, other := range cases {
		if other == k {
			t.Errorf("%s: key unchanged", name)
		}
	}
	if again := Base("img1", "qemu-7.2 tcg 2048M").Step("RUN echo hi", map[string]string{}, ""); again != k {
		t.Errorf("same inputs gave a different key")
	}
	// Field boundaries are unambiguous.
	if base.Step("ab", map[string]string{"c": ""}, "") == base.Step("a", map[string]string{"bc": ""}, "") {
		t.Errorf("ambiguous encoding")
	}
}

func TestSecretDigest(t *testing.T) {
	salt := []byte("salt")
	a := SecretDigest(salt, map[string]string{"TOKEN": "hunter2"})
	if a == "" || a == SecretDigest(salt, map[string]string{"TOKEN": "hunter3"}) {
		t.Fatal("value change not reflected")
	}
	if a == SecretDigest([]byte("other"), map[string]string{"TOKEN": "hunter2"}) {
		t.Fatal("salt ignored")
	}
	if SecretDigest(salt, nil) != "" {
		t.Fatal("no secrets should give an empty digest")
	}
}
