// Package version says which build of Custos is running, for --version
// and the build-info metric.
package version

import "runtime/debug"

// String is the module version the program was built as, with its VCS
// revision when the build recorded one.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}
