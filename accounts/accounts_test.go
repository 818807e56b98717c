package accounts

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/tests/pgtest"
)

func key(t *testing.T) *exchange.PublicKey {
	s, err := group.GenerateScalar(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return exchange.DHKey(s.Public())
}

// each runs f against SQLite and PostgreSQL.
func each(t *testing.T, f func(t *testing.T, dsn string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, filepath.Join(t.TempDir(), "custos.db")) })
	t.Run("sqlite in a missing directory", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "sub")
		if _, err := Open(context.Background(), filepath.Join(missing, "custos.db")); err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("a registry in a missing directory: %v", err)
		}
	})
	t.Run("postgres", func(t *testing.T) { f(t, pgtest.Start(t)) })
}

func TestRegistry(t *testing.T) {
	each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		r, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		alice1, alice2, bob := key(t), key(t), key(t)
		for _, c := range []struct {
			account string
			key     *exchange.PublicKey
		}{{"alice@example.com", alice1}, {"alice@example.com", alice2}, {"bob@example.com", bob}, {"alice@example.com", alice1}} {
			if err := r.Add(ctx, c.account, c.key); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Add(ctx, "bob@example.com", alice1); !errors.Is(err, ErrKeyInUse) {
			t.Fatalf("stealing a credential: %v", err)
		}
		for _, bad := range []string{"", "has space", string(make([]byte, 300))} {
			if err := r.Add(ctx, bad, key(t)); !errors.Is(err, ErrBadAccount) {
				t.Errorf("account %q: %v", bad, err)
			}
		}
		acct, disabled, err := r.Lookup(ctx, alice2.KeyID())
		if err != nil || acct != "alice@example.com" || disabled {
			t.Fatalf("lookup: %q %v %v", acct, disabled, err)
		}
		if _, _, err := r.Lookup(ctx, key(t).KeyID()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown kid: %v", err)
		}
		if err := r.SetDisabled(ctx, "alice@example.com", true); err != nil {
			t.Fatal(err)
		}
		if _, disabled, _ := r.Lookup(ctx, alice1.KeyID()); !disabled {
			t.Fatal("disable did not take")
		}
		if d, _ := r.Disabled(ctx, "alice@example.com"); !d {
			t.Fatal("Disabled says enabled")
		}
		if err := r.SetDisabled(ctx, "nobody", true); !errors.Is(err, ErrNotFound) {
			t.Fatalf("disable unknown: %v", err)
		}
		list, err := r.List(ctx)
		if err != nil || len(list) != 2 || list[0].ID != "alice@example.com" || len(list[0].Credentials) != 2 || !list[0].Disabled || len(list[1].Credentials) != 1 {
			t.Fatalf("list: %+v %v", list, err)
		}
		if _, err := group.DecodeWire(list[1].Credentials[0].Public); err != nil || list[1].Credentials[0].KID != bob.KeyID() {
			t.Fatal("stored public key does not decode to the registered one")
		}
		if err := r.Remove(ctx, "bob@example.com"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.Lookup(ctx, bob.KeyID()); !errors.Is(err, ErrNotFound) {
			t.Fatal("removed account's credential still found")
		}
		if d, _ := r.Disabled(ctx, "bob@example.com"); !d {
			t.Fatal("a removed account must count as disabled")
		}
		// Reopening runs no migration twice and keeps the data.
		r2, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer r2.Close()
		if acct, _, err := r2.Lookup(ctx, alice1.KeyID()); err != nil || acct != "alice@example.com" {
			t.Fatalf("after reopen: %v", err)
		}
	})
}
