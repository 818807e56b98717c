package hsm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	pinFile := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pinFile, []byte("12 34\n"), 0o600)
	cfg, err := ParseURI("pkcs11:model=SoftHSM%20v2;token=my%20token?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:" + pinFile)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TokenLabel != "my token" || cfg.Module != "/usr/lib/softhsm/libsofthsm2.so" || cfg.PIN != "12 34" {
		t.Fatalf("%+v", cfg)
	}
	cfg, err = ParseURI("pkcs11:token=t?pin-value=5678")
	if err != nil || cfg.PIN != "5678" || cfg.Module != "" {
		t.Fatalf("%+v %v", cfg, err)
	}
	for uri, want := range map[string]string{
		"token=x":                                    `starts with "pkcs11:"`,
		"pkcs11:slot-id=3":                           "by its label",
		"pkcs11:object=k":                            "names no token",
		"pkcs11:token=x?module-name=softhsm":         "module-path",
		"pkcs11:token=x?pin-source=/nonexistent/pin": "reading the PIN file",
		"pkcs11:token=%zz":                           "percent-encoded",
		"pkcs11:token=x?pin-value=1&pin-source=/p":   "keep one",
		"pkcs11:tokn=x":                              "unknown URI attribute",
	} {
		if _, err := ParseURI(uri); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error mentioning %q", uri, err, want)
		}
	}
}
