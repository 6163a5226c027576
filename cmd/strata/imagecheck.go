package main

import (
	"github.com/strata-ci/strata/internal/image"
	"github.com/strata-ci/strata/internal/layerfile"
	"github.com/strata-ci/strata/internal/plan"
)

// imageDiagnostics reports each FROM line whose base image name resolves to
// no image strata can build (its recipes, their usual spellings and the
// aliases in $STRATA_HOME/config.json): a bad Layerfile, found before any
// VM starts.
func imageDiagnostics(repo *plan.Repo, cfg image.Config) []layerfile.Diagnostic {
	var ds []layerfile.Diagnostic
	for _, f := range repo.Files {
		if len(f.Instructions) == 0 || f.Instructions[0].From == nil || f.Instructions[0].From.Image == "" {
			continue
		}
		ins := f.Instructions[0]
		if _, err := image.Resolve(cfg, ins.From.Image); err != nil {
			ds = append(ds, layerfile.Diagnostic{Pos: ins.Pos, Severity: layerfile.Error, Message: "FROM " + err.Error()})
		}
	}
	return ds
}
