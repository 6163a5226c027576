package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Default mirrors. The Debian one is the mirror apt uses on Debian hosts.
const (
	DefaultMirror       = "http://deb.debian.org/debian"
	DefaultUbuntuMirror = "http://archive.ubuntu.com/ubuntu"
)

// Config says where base images live, which mirrors they are built from
// and how image names are aliased.
//
// LoadConfig fills it from the environment and from the optional JSON file
// $STRATA_HOME/config.json. The file's keys this package reads (all
// optional, unknown keys are ignored so other parts of strata may share the
// file):
//
//	{
//	  "images_dir":    "/var/lib/strata-images",
//	  "debian_mirror": "http://deb.debian.org/debian",
//	  "ubuntu_mirror": "http://archive.ubuntu.com/ubuntu",
//	  "agent_path":    "/usr/local/lib/strata/strata-agent",
//	  "aliases": {
//	    "vm/ubuntu:18.04": "vm/debian:12",
//	    "library/python:3.11": "vm/debian:12"
//	  }
//	}
//
// Environment variables win over the file: STRATA_HOME, STRATA_IMAGES,
// STRATA_DEBIAN_MIRROR, STRATA_UBUNTU_MIRROR, STRATA_AGENT.
type Config struct {
	Home         string // $STRATA_HOME
	ImagesDir    string // $STRATA_IMAGES, default Home/images
	Mirror       string // Debian mirror (vm/debian:*)
	UbuntuMirror string // Ubuntu mirror (vm/ubuntu:*)
	// Aliases maps an image name (vm/..., library/...) to another one.
	// Aliases are followed until a built-in recipe name is reached.
	Aliases map[string]string
	// AgentPath is the static guest agent binary baked into images.
	// Default: strata-agent beside the running executable.
	AgentPath string
}

// ConfigFileName is the name of the config file inside Config.Home.
const ConfigFileName = "config.json"

// fileConfig is the part of config.json this package reads.
type fileConfig struct {
	ImagesDir    string            `json:"images_dir"`
	DebianMirror string            `json:"debian_mirror"`
	UbuntuMirror string            `json:"ubuntu_mirror"`
	AgentPath    string            `json:"agent_path"`
	Aliases      map[string]string `json:"aliases"`
}

// DefaultHome returns $STRATA_HOME, else $XDG_DATA_HOME/strata, else
// ~/.local/share/strata.
func DefaultHome() (string, error) {
	if h := os.Getenv("STRATA_HOME"); h != "" {
		return h, nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "strata"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("strata home: set STRATA_HOME: %w", err)
	}
	return filepath.Join(home, ".local", "share", "strata"), nil
}

// LoadConfig builds a Config from the environment and $STRATA_HOME/config.json,
// with defaults filled in. A missing config file is not an error; a
// malformed one is.
func LoadConfig() (Config, error) {
	home, err := DefaultHome()
	if err != nil {
		return Config{}, err
	}
	cfg := Config{Home: home}
	var fc fileConfig
	path := filepath.Join(home, ConfigFileName)
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return Config{}, fmt.Errorf("read config: %w", err)
	default:
		if err := json.Unmarshal(data, &fc); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
	}
	cfg.ImagesDir = firstNonEmpty(os.Getenv("STRATA_IMAGES"), fc.ImagesDir)
	cfg.Mirror = firstNonEmpty(os.Getenv("STRATA_DEBIAN_MIRROR"), fc.DebianMirror)
	cfg.UbuntuMirror = firstNonEmpty(os.Getenv("STRATA_UBUNTU_MIRROR"), fc.UbuntuMirror)
	cfg.AgentPath = firstNonEmpty(os.Getenv("STRATA_AGENT"), fc.AgentPath)
	cfg.Aliases = fc.Aliases
	return cfg.withDefaults(), nil
}

// withDefaults fills empty fields. AgentPath stays empty when no agent is
// found beside the executable; Ensure reports that.
func (c Config) withDefaults() Config {
	if c.Home == "" {
		c.Home, _ = DefaultHome()
	}
	if c.ImagesDir == "" && c.Home != "" {
		c.ImagesDir = filepath.Join(c.Home, "images")
	}
	if c.Mirror == "" {
		c.Mirror = DefaultMirror
	}
	if c.UbuntuMirror == "" {
		c.UbuntuMirror = DefaultUbuntuMirror
	}
	c.Mirror = strings.TrimRight(c.Mirror, "/")
	c.UbuntuMirror = strings.TrimRight(c.UbuntuMirror, "/")
	if c.AgentPath == "" {
		if exe, err := os.Executable(); err == nil {
			p := filepath.Join(filepath.Dir(exe), "strata-agent")
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				c.AgentPath = p
			}
		}
	}
	return c
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// builtinAliases are spellings that always resolve.
var builtinAliases = map[string]string{
	"vm/debian":          "vm/debian:12",
	"vm/debian:bookworm": "vm/debian:12",
	"vm/ubuntu:bionic":   "vm/ubuntu:18.04",
	"vm/ubuntu:jammy":    "vm/ubuntu:22.04",
	"vm/ubuntu:noble":    "vm/ubuntu:24.04",
	"debian:12":          "vm/debian:12",
	"debian:bookworm":    "vm/debian:12",
	"ubuntu:18.04":       "vm/ubuntu:18.04",
	"ubuntu:22.04":       "vm/ubuntu:22.04",
	"ubuntu:24.04":       "vm/ubuntu:24.04",
}

// Resolve follows aliases from name to the name of a built-in recipe. At
// each step the config's aliases win (so vm/ubuntu:18.04 can be mapped to
// vm/debian:12), then recipe names, then built-in spellings (debian:12,
// ubuntu:22.04, vm/ubuntu:jammy...). Library names (library/name:tag)
// resolve only through the config's aliases.
func Resolve(cfg Config, name string) (string, error) {
	orig := name
	seen := map[string]bool{}
	for {
		if seen[name] {
			return "", fmt.Errorf("image %q: alias loop through %q", orig, name)
		}
		seen[name] = true
		if to, ok := cfg.Aliases[name]; ok {
			name = to
			continue
		}
		if _, ok := recipes[name]; ok {
			return name, nil
		}
		if to, ok := builtinAliases[name]; ok {
			name = to
			continue
		}
		return "", &UnknownImageError{Name: orig, Via: name}
	}
}

// UnknownImageError says an image name resolves to no recipe.
type UnknownImageError struct {
	Name string // as asked
	Via  string // last name reached through aliases
}

func (e *UnknownImageError) Error() string {
	via := ""
	if e.Via != e.Name {
		via = fmt.Sprintf(" (via alias to %q)", e.Via)
	}
	return fmt.Sprintf("unknown image %q%s: known images are %s; map other names with \"aliases\" in $STRATA_HOME/%s, e.g. {\"aliases\": {%q: \"vm/debian:12\"}}",
		e.Name, via, strings.Join(RecipeNames(), ", "), ConfigFileName, e.Name)
}
