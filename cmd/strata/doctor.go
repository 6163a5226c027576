package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/vm"
)

func init() { commandRegistry = append(commandRegistry, newDoctorCmd) }

func newDoctorCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check this host: QEMU, accelerator, tools, free disk, mirrors",
		Long: `Doctor reports what strata needs from this host: the QEMU version, which
accelerator VMs will use (KVM only when a probe VM really boots with it, else
TCG software emulation), the image-building tools, free disk space under
STRATA_HOME, and whether the Debian and Ubuntu mirrors answer. It exits 3 when
something required is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			defer out.Flush()
			bad := false
			report := func(what, status, detail string) {
				fmt.Fprintf(out, "%s\t%s\t%s\n", what, status, detail)
				if status == "MISSING" {
					bad = true
				}
			}
			cfg, err := image.LoadConfig()
			if err != nil {
				return withExit(2, err)
			}
			report("STRATA_HOME", "ok", cfg.Home)
			hv, err := vm.NewQEMU(vm.QEMUOptions{CacheDir: filepath.Join(cfg.Home, "cache"), Warn: nopWriter{}})
			if err != nil {
				report("qemu", "MISSING", "apt-get install qemu-system-x86 qemu-utils")
			} else {
				report("qemu", "ok", "version "+hv.Version())
				kernel := ""
				if imgs, _ := image.List(cfg); len(imgs) > 0 {
					kernel = imgs[0].Image.Kernel
				}
				if kernel == "" {
					report("accelerator", "unknown", "probed on first use (needs a base image: strata images build)")
				} else {
					ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
					a, why := hv.Accel(ctx, kernel)
					cancel()
					status := "ok"
					if a == vm.AccelTCG {
						status = "slow"
					}
					report("accelerator", status, fmt.Sprintf("%s: %s", a, why))
				}
			}
			for _, tool := range []struct{ bin, pkg string }{
				{"mmdebstrap", "mmdebstrap"}, {"mkfs.ext4", "e2fsprogs"}, {"zstd", "zstd"}, {"qemu-img", "qemu-utils"},
			} {
				if p, err := exec.LookPath(tool.bin); err != nil {
					report(tool.bin, "MISSING", "apt-get install "+tool.pkg)
				} else {
					report(tool.bin, "ok", p)
				}
			}
			if err := os.MkdirAll(cfg.Home, 0o755); err == nil {
				var fs unix.Statfs_t
				if unix.Statfs(cfg.Home, &fs) == nil {
					free := int64(fs.Bavail) * fs.Bsize
					status := "ok"
					if free < 10<<30 {
						status = "low"
					}
					report("free disk", status, humanBytes(free)+" under "+cfg.Home)
				}
			}
			for _, m := range []struct{ name, url, suite string }{
				{"debian mirror", cfg.Mirror, "bookworm"}, {"ubuntu mirror", cfg.UbuntuMirror, "jammy"},
			} {
				if m.url == "" {
					report(m.name, "unset", "")
					continue
				}
				if err := probeURL(cmd.Context(), strings.TrimRight(m.url, "/")+"/dists/"+m.suite+"/Release"); err != nil {
					report(m.name, "unreachable", fmt.Sprintf("%s (%v); alias its images in %s", m.url, err, filepath.Join(cfg.Home, image.ConfigFileName)))
				} else {
					report(m.name, "ok", m.url)
				}
			}
			if bad {
				out.Flush()
				return withExit(3, fmt.Errorf("something strata needs is missing (see above); ./scripts/setup.sh installs it"))
			}
			return nil
		},
	}
}

func probeURL(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
