package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/strata-ci/strata/internal/image"
)

func init() { commandRegistry = append(commandRegistry, newImagesCmd) }

func newImagesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Build, list and remove base images (vm/debian:12, vm/ubuntu:*)",
		Long: `Base images are built locally from a distribution mirror: a root disk
(qcow2, 60G virtual), a kernel and an initramfs, with systemd, networking and
the strata guest agent. They live under $STRATA_IMAGES (default
$STRATA_HOME/images).

Built-in images: ` + strings.Join(image.RecipeNames(), ", ") + `.

Mirrors and aliases come from $STRATA_HOME/config.json:

  {
    "debian_mirror": "http://deb.debian.org/debian",
    "ubuntu_mirror": "http://archive.ubuntu.com/ubuntu",
    "images_dir":    "/var/lib/strata/images",
    "agent_path":    "/usr/local/lib/strata/strata-agent",
    "aliases": {"vm/ubuntu:18.04": "vm/debian:12", "library/node:20": "vm/debian:12"}
  }

Environment variables override the file: STRATA_HOME, STRATA_IMAGES,
STRATA_DEBIAN_MIRROR, STRATA_UBUNTU_MIRROR, STRATA_AGENT.`,
	}
	cmd.AddCommand(newImagesBuildCmd(), newImagesLsCmd(), newImagesRmCmd())
	return cmd
}

func newImagesBuildCmd() *cobra.Command {
	var packages []string
	cmd := &cobra.Command{
		Use:   "build [name]",
		Short: "Build a base image (default vm/debian:12), reusing cached levels",
		Long: `Build a base image, or do nothing if it is already built.

The slow level (the root filesystem from the mirror, a minute or two) is
cached by recipe; the disk with the current guest agent is rebuilt in
seconds when only the agent changed. --package adds distribution packages
(e.g. --package docker.io); each set of packages is its own image.`,
		Example: `  strata images build
  strata images build vm/debian:12 --package docker.io --package busybox-static`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := "vm/debian:12"
			if len(args) == 1 {
				name = args[0]
			}
			cfg, err := image.LoadConfig()
			if err != nil {
				return withExit(2, err)
			}
			// Ctrl-C cancels the build cleanly: the build tools run in
			// their own process group and are stopped by Ensure.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			b, err := image.Ensure(ctx, cfg, name, packages, cmd.ErrOrStderr())
			if err != nil {
				return withExit(imageExitCode(err), err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\n", b.Name, b.ID, b.Dir)
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&packages, "package", "p", nil, "extra distribution package to install (repeatable)")
	return cmd
}

func newImagesLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List built base images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := image.LoadConfig()
			if err != nil {
				return withExit(2, err)
			}
			all, err := image.List(cfg)
			if err != nil {
				return withExit(3, err)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tPACKAGES\tSIZE\tCREATED")
			for _, b := range all {
				pk := strings.Join(b.Packages, ",")
				if pk == "" {
					pk = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f MiB\t%s\n", b.Name, b.ID, pk,
					float64(b.Size)/(1<<20), b.Created.Local().Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
}

func newImagesRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME|ID...",
		Short: "Remove base images by name (every build of it) or ID",
		Long: `Remove base images. A name (e.g. vm/debian:12) removes every build of that
image, whatever its packages or agent, and its cached root filesystems; an
ID (or a unique prefix of at least 4 characters) removes that one build.
Snapshots whose base image was removed can no longer be restored.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := image.LoadConfig()
			if err != nil {
				return withExit(2, err)
			}
			for _, a := range args {
				if err := image.Remove(cfg, a); err != nil {
					if errors.Is(err, image.ErrNotFound) {
						return withExit(2, err)
					}
					return withExit(3, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", a)
			}
			return nil
		},
	}
}

// imageExitCode maps image errors to exit codes: 2 for bad input, 3 for
// infrastructure (mirror, tools, agent, disk).
func imageExitCode(err error) int {
	var unknown *image.UnknownImageError
	var badPkg *image.BadPackageError
	if errors.As(err, &unknown) || errors.As(err, &badPkg) {
		return 2
	}
	return 3
}
