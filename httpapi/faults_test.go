package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/keystore"
)

// failingKeystore is a real in-memory keystore whose Derive fails with err.
type failingKeystore struct {
	*keystore.Software
	err error
}

func (k *failingKeystore) Derive(ctx context.Context, kid string, peer *exchange.PublicKey) ([]byte, error) {
	return nil, k.err
}

// TestUnexpectedErrors checks that only the keystore's unavailability is
// 503 KeystoreUnavailable: any other failure (a bug, a token answering
// something no recovery explains) is 500 Internal, logged once with its
// cause, which the body does not show.
func TestUnexpectedErrors(t *testing.T) {
	const secret = "CKR_MECHANISM_INVALID in slot 7"
	for _, tc := range []struct {
		err    error
		status int
		code   exchange.Code
	}{
		{errors.New(secret), 500, exchange.Internal},
		{fmt.Errorf("%w: %s", exchange.ErrKeystoreUnavailable, secret), 503, exchange.KeystoreUnavailable},
	} {
		soft, err := keystore.NewSoftware(nil)
		if err != nil {
			t.Fatal(err)
		}
		reg, err := accounts.Open(context.Background(), filepath.Join(t.TempDir(), "custos.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { reg.Close() })
		key, _ := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
		if err := reg.Add(context.Background(), "alice@example.com", key.Public()); err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		svc := New(Config{
			Engine: &exchange.Server{Keystore: &failingKeystore{soft, tc.err}, Accounts: reg},
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			Limits: Limits{PerAddress: -1, PerAccount: -1},
		})
		_, msg, _ := key.NewExchange(rand.Reader, nil)
		body, _ := json.Marshal(msg)
		req := httptest.NewRequest(http.MethodPost, WellKnown, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		svc.ServeHTTP(w, req)
		var got struct {
			ExchangeResponse struct {
				Status                   int
				Error, StatusDescription string
			}
		}
		json.Unmarshal(w.Body.Bytes(), &got)
		if w.Code != tc.status || got.ExchangeResponse.Error != string(tc.code) || got.ExchangeResponse.Status != tc.status {
			t.Errorf("%v: got %d %+v, want %d %s", tc.err, w.Code, got.ExchangeResponse, tc.status, tc.code)
		}
		if strings.Contains(w.Body.String(), "CKR_") || strings.Contains(w.Body.String(), "slot") {
			t.Errorf("%v: the body shows the cause: %s", tc.err, w.Body)
		}
		if n := strings.Count(logs.String(), secret); n != 1 {
			t.Errorf("%v: the cause is in %d log lines, want 1:\n%s", tc.err, n, logs.String())
		}
	}
}
