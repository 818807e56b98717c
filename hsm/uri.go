package hsm

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// ParseURI reads an RFC 7512 PKCS#11 URI naming the module, the token and
// the PIN source, as p11-kit, OpenSSL and gokeyless accept them:
//
//	pkcs11:token=custos?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/custos/pin
//
// The token is found by label (token=); slot-id is refused because slot ids
// change. The PIN comes from pin-source (a file) or pin-value; a URI that
// carries pin-value must itself come from the environment or a file, never
// from the command line.
func ParseURI(uri string) (Config, error) {
	var cfg Config
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return cfg, errors.New(`hsm: a PKCS#11 URI starts with "pkcs11:"`)
	}
	path, query, _ := strings.Cut(rest, "?")
	for _, attr := range splitNonEmpty(path, ";") {
		name, value, err := uriAttr(attr)
		if err != nil {
			return cfg, err
		}
		switch name {
		case "token":
			cfg.TokenLabel = value
		case "slot-id", "slot-description", "slot-manufacturer":
			return cfg, fmt.Errorf("hsm: URI attribute %q is not supported: Custos finds the token by its label (token=…), since slot ids change", name)
		case "manufacturer", "model", "serial", "library-manufacturer", "library-description", "library-version", "object", "type", "id":
			// Narrow the match in other tools; a label is enough for Custos.
		default:
			return cfg, fmt.Errorf("hsm: unknown URI attribute %q", name)
		}
	}
	var pinSource, pinValue string
	for _, attr := range splitNonEmpty(query, "&") {
		name, value, err := uriAttr(attr)
		if err != nil {
			return cfg, err
		}
		switch name {
		case "module-path":
			cfg.Module = value
		case "pin-source":
			pinSource = value
		case "pin-value":
			pinValue = value
		case "module-name":
			return cfg, errors.New("hsm: module-name needs p11-kit's module registry; give module-path instead")
		default:
			return cfg, fmt.Errorf("hsm: unknown URI query attribute %q", name)
		}
	}
	if cfg.TokenLabel == "" {
		return cfg, errors.New("hsm: the URI names no token (add token=LABEL)")
	}
	switch {
	case pinSource != "" && pinValue != "":
		return cfg, errors.New("hsm: the URI has both pin-source and pin-value; keep one")
	case pinSource != "":
		pin, err := ReadPINFile(strings.TrimPrefix(pinSource, "file:"))
		if err != nil {
			return cfg, err
		}
		cfg.PIN = pin
	default:
		cfg.PIN = pinValue
	}
	return cfg, nil
}

// URIHoldsPIN reports whether a PKCS#11 URI carries the PIN itself
// (pin-value), which only the environment may hold.
func URIHoldsPIN(uri string) bool {
	_, query, _ := strings.Cut(uri, "?")
	for _, attr := range splitNonEmpty(query, "&") {
		if name, _, _ := strings.Cut(attr, "="); name == "pin-value" {
			return true
		}
	}
	return false
}

func splitNonEmpty(s, sep string) []string {
	var out []string
	for _, p := range strings.Split(s, sep) {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

func uriAttr(attr string) (name, value string, err error) {
	name, raw, ok := strings.Cut(attr, "=")
	if !ok {
		return "", "", fmt.Errorf("hsm: URI attribute %q has no value", attr)
	}
	value, err = url.PathUnescape(raw)
	if err != nil {
		return "", "", fmt.Errorf("hsm: URI attribute %s is not properly percent-encoded", name)
	}
	return name, value, nil
}

// ReadPINFile reads a PIN from a file, without the trailing newline. The
// file should be readable by the service's user only.
func ReadPINFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("hsm: reading the PIN file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("hsm: the PIN file %s can be read by others (mode %04o); make it readable by its owner only (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("hsm: reading the PIN file: %w", err)
	}
	pin := strings.TrimRight(string(b), "\r\n")
	if pin == "" {
		return "", fmt.Errorf("hsm: the PIN file %s is empty", path)
	}
	return pin, nil
}
