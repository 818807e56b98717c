// Package cli holds what custosd and custos share on the command line:
// flags that may stand before or after the command's words, and settings
// that come from a flag, else an environment variable, else a config file.
package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Parse parses args with fs, allowing flags between positional arguments,
// and returns the positional arguments.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return words, nil
		}
		if rest[0] == "--" {
			return append(words, rest[1:]...), nil
		}
		words = append(words, rest[0])
		args = rest[1:]
	}
}

// Setting is a string option with an environment variable and a config
// file key as fallbacks for its flag.
type Setting struct {
	Flag    string
	Env     string
	Default string
	Usage   string
	Value   *string
}

// Define defines the settings' flags on fs.
func Define(fs *flag.FlagSet, settings []Setting) {
	for _, s := range settings {
		usage := s.Usage
		if s.Env != "" {
			usage += " (env " + s.Env + ")"
		}
		fs.StringVar(s.Value, s.Flag, s.Default, usage)
	}
}

// Resolve fills each setting that was not given as a flag from its
// environment variable, else from the config file (a JSON object keyed by
// flag name) if path is not empty.
func Resolve(fs *flag.FlagSet, settings []Setting, path string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var file map[string]any
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("reading the config file: %w", err)
		}
		if err := json.Unmarshal(b, &file); err != nil {
			return fmt.Errorf("the config file %s is not a JSON object: %v", path, err)
		}
		known := map[string]bool{}
		for _, s := range settings {
			known[s.Flag] = true
		}
		for k := range file {
			if strings.Contains(k, "pin") && k != "pin-file" {
				return fmt.Errorf("the config file %s has a setting %q: it may name a PIN file (pin-file), never hold a PIN", path, k)
			}
			if !known[k] {
				return fmt.Errorf("the config file %s has an unknown setting %q", path, k)
			}
		}
	}
	for _, s := range settings {
		if set[s.Flag] {
			continue
		}
		if v, ok := os.LookupEnv(s.Env); ok && s.Env != "" {
			*s.Value = v
			continue
		}
		if v, ok := file[s.Flag]; ok {
			*s.Value = configValue(v)
		}
	}
	return nil
}

// configValue is a config file's JSON value as the flag would be written:
// a whole number as digits ("max-sessions": 1000000 is "1000000", not
// "1e+06").
func configValue(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}
