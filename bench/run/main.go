// Command run measures what `strata run` costs cold and warm, as ratios
// taken in one run on one machine (absolute times vary on shared hosts):
//
//   - no-op rerun: a 10-step Layerfile run again with nothing changed,
//     total time / cold time (target <= 0.01, and under 1 s);
//   - the Docker scenario (examples/docker): warm run with one source file
//     of the service changed / cold run on an empty store (target <= 0.05),
//     and the bytes the warm run added to the store.
//
// Usage: go run ./bench/run [-docker=false] [-strata bin/strata]
// It uses a fresh temporary STRATA_HOME and the images in $STRATA_IMAGES
// (default: the usual images folder), building the base image if needed
// (not timed).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	strata := flag.String("strata", "bin/strata", "strata binary (build it with make build)")
	docker := flag.Bool("docker", true, "also measure the Docker scenario (several minutes)")
	graph := flag.Bool("graph", true, "also measure examples/graph (one child's file changed)")
	keep := flag.Bool("keep", false, "keep the temporary STRATA_HOME")
	flag.Parse()
	bin, err := filepath.Abs(*strata)
	check(err)
	home, err := os.MkdirTemp("", "strata-bench-")
	check(err)
	if !*keep {
		defer os.RemoveAll(home)
	}
	env := append(os.Environ(), "STRATA_HOME="+home)
	if os.Getenv("STRATA_IMAGES") == "" {
		if h, err := os.UserHomeDir(); err == nil {
			env = append(env, "STRATA_IMAGES="+filepath.Join(h, ".local", "share", "strata", "images"))
		}
	}
	fmt.Println("building the base image if needed (not timed)...")
	run(bin, env, "images", "build", "vm/debian:12")

	// 10 steps, nothing changed on the second run.
	repo, err := os.MkdirTemp("", "strata-bench-repo-")
	check(err)
	defer os.RemoveAll(repo)
	var lf strings.Builder
	lf.WriteString("FROM vm/debian:12\n")
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&lf, "RUN echo step %d > /root/step-%d\n", i, i)
	}
	check(os.WriteFile(filepath.Join(repo, "Layerfile"), []byte(lf.String()), 0o644))
	cold := timed(bin, env, "run", repo)
	warm := timed(bin, env, "run", repo)
	fmt.Printf("\n10-step Layerfile: cold %.1fs, no-op rerun %.3fs\n", cold.Seconds(), warm.Seconds())
	fmt.Printf("  no-op rerun / cold = %.4f (target <= 0.01, and under 1 s)\n", warm.Seconds()/cold.Seconds())

	if *graph {
		measureGraph(bin, append(env, "STRATA_HOME="+filepath.Join(home, "graph")))
	}
	if !*docker {
		return
	}
	src, err := filepath.Abs("examples/docker")
	check(err)
	work, err := os.MkdirTemp("", "strata-bench-docker-")
	check(err)
	defer os.RemoveAll(work)
	check(copyTree(src, work))
	dockerHome := filepath.Join(home, "docker")
	denv := append(env, "STRATA_HOME="+dockerHome)
	cold = timed(bin, denv, "run", work)
	before := du(filepath.Join(dockerHome, "store"))
	page := filepath.Join(work, "service", "www", "index.html")
	check(os.WriteFile(page, []byte("hello again from strata\n"), 0o644))
	warm = timed(bin, denv, "run", work)
	added := du(filepath.Join(dockerHome, "store")) - before
	fmt.Printf("\nDocker scenario: cold %.1fs, warm (one source file changed) %.1fs\n", cold.Seconds(), warm.Seconds())
	fmt.Printf("  warm / cold = %.3f (target <= 0.05)\n", warm.Seconds()/cold.Seconds())
	fmt.Printf("  store bytes added by the warm run: %.1f MiB\n", float64(added)/(1<<20))
	out := run(bin, denv, "explain", work)
	fmt.Printf("\n%s", out)
}

// measureGraph runs examples/graph cold, then warm with a new file in a/
// (which a/ copies): only a's steps from its COPY on should run.
func measureGraph(bin string, env []string) {
	src, err := filepath.Abs("examples/graph")
	check(err)
	work, err := os.MkdirTemp("", "strata-bench-graph-")
	check(err)
	defer os.RemoveAll(work)
	check(copyTree(src, work))
	cold := timed(bin, env, "run", "--accept-buttons", work)
	check(os.WriteFile(filepath.Join(work, "a", "notes.txt"), []byte("a new file\n"), 0o644))
	start := time.Now()
	out := run(bin, env, "run", "--accept-buttons", "--output", "json", work)
	warm := time.Since(start)
	ran := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"event":"step"`) && strings.Contains(line, `"status":"ran"`) {
			i := strings.Index(line, `"runner":"`)
			if i >= 0 {
				r := line[i+10:]
				ran[r[:strings.IndexByte(r, '"')]]++
			}
		}
	}
	fmt.Printf("\nexamples/graph: cold %.1fs, warm (a new file in a/) %.1fs\n", cold.Seconds(), warm.Seconds())
	fmt.Printf("  warm / cold = %.3f; steps that ran, per runner: %v\n", warm.Seconds()/cold.Seconds(), ran)
}

func timed(bin string, env []string, args ...string) time.Duration {
	start := time.Now()
	run(bin, env, args...)
	return time.Since(start)
}

func run(bin string, env []string, args ...string) string {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "strata %s: %v\n%s", strings.Join(args, " "), err, out.String())
		os.Exit(1)
	}
	return out.String()
}

// du is the bytes files below dir occupy.
func du(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += allocated(fi)
			}
		}
		return nil
	})
	return n
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
