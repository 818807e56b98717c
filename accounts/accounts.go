// Package accounts is the registry that binds account identifiers (such as
// alice@example.com) to the credential keys that may act for them. The
// service looks a credential up by kid on every exchange, and the engine
// checks an account's status on every authenticated request and rekey.
//
// One SQL implementation serves the embedded default (SQLite, a file under
// ./var) and PostgreSQL (selected by a postgres:// DSN), so that several
// replicas can share one registry.
package accounts

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/custos-kx/custos/exchange"
)

// Account is one registered account.
type Account struct {
	ID          string
	Disabled    bool
	Created     time.Time
	Credentials []Credential
}

// Credential is a public key bound to an account.
type Credential struct {
	KID    string
	Public []byte // the key object's Public member: a group-14 value or a P-256 point
	Added  time.Time
}

var (
	ErrNotFound   = errors.New("accounts: not found")
	ErrKeyInUse   = errors.New("accounts: the credential is already bound to another account")
	ErrBadAccount = errors.New("accounts: an account identifier is 1 to 256 printable characters")
)

// Registry is the account registry.
type Registry struct {
	db      *sql.DB
	dialect dialect
	// Statements on every exchange and status check, prepared once: parsing
	// the SQL was most of a lookup's cost.
	lookup, disabled *sql.Stmt
}

type dialect int

const (
	sqlite dialect = iota
	postgres
)

// Open opens the registry named by dsn — a postgres:// or postgresql:// URL,
// or else a SQLite file path (its directory is created) — and brings its
// schema up to date.
func Open(ctx context.Context, dsn string) (*Registry, error) {
	r := &Registry{}
	var err error
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		r.dialect = postgres
		r.db, err = sql.Open("pgx", dsn)
	} else {
		// A directory that does not exist is a typo more often than a
		// wish: refuse it, naming it, rather than make an empty registry.
		if dir := filepath.Dir(dsn); dir != "" {
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				return nil, fmt.Errorf("accounts: the registry's directory %s does not exist; create it, or correct the path", dir)
			}
		}
		r.dialect = sqlite
		// WAL and a busy timeout let the CLI change accounts while the service runs.
		// BEGIN IMMEDIATE: a transaction that reads before it writes would
		// otherwise get SQLITE_BUSY at once on the upgrade, busy timeout or not.
		r.db, err = sql.Open("sqlite", "file:"+dsn+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	}
	if err != nil {
		return nil, err
	}
	if err := r.db.PingContext(ctx); err != nil {
		r.db.Close()
		return nil, fmt.Errorf("accounts: cannot reach the registry %s: %w", redact(dsn), err)
	}
	if err := r.migrate(ctx); err != nil {
		r.db.Close()
		if r.dialect == sqlite {
			return nil, fmt.Errorf("accounts: the SQLite registry %s: %w (can the service's user write the file and its directory?)", dsn, err)
		}
		return nil, err
	}
	if err := r.prepare(ctx); err != nil {
		r.db.Close()
		return nil, err
	}
	return r, nil
}

// redact drops the password of a PostgreSQL DSN before it is shown.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		u.User = url.User(u.User.Username())
		return u.String()
	}
	return dsn
}

// AuditEntry is one administrative action.
type AuditEntry struct {
	At      time.Time
	Actor   string // the OS user who ran it
	Action  string // "account add", "keys prune", …
	Subject string // the account or key it acted on
	Detail  string
}

// Audit appends an entry to the trail.
func (r *Registry) Audit(ctx context.Context, e AuditEntry) error {
	_, err := r.db.ExecContext(ctx, r.q(`INSERT INTO audit (at_ns, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)`),
		e.At.UnixNano(), e.Actor, e.Action, e.Subject, e.Detail)
	return err
}

// AuditSince returns the entries from since on, oldest first.
func (r *Registry) AuditSince(ctx context.Context, since time.Time) ([]AuditEntry, error) {
	rows, err := r.db.QueryContext(ctx, r.q(`SELECT at_ns, actor, action, subject, detail FROM audit WHERE at_ns >= ? ORDER BY at_ns`), since.UnixNano())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var ns int64
		if err := rows.Scan(&ns, &e.Actor, &e.Action, &e.Subject, &e.Detail); err != nil {
			return nil, err
		}
		e.At = time.Unix(0, ns).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// Ping checks that the registry answers.
func (r *Registry) Ping(ctx context.Context) error { return r.db.PingContext(ctx) }

// Close closes the database.
func (r *Registry) Close() error { return r.db.Close() }

func (r *Registry) prepare(ctx context.Context) (err error) {
	r.lookup, err = r.db.PrepareContext(ctx, r.q(
		`SELECT a.id, a.disabled FROM credentials c JOIN accounts a ON a.id = c.account_id WHERE c.kid = ?`))
	if err != nil {
		return err
	}
	r.disabled, err = r.db.PrepareContext(ctx, r.q(`SELECT disabled FROM accounts WHERE id = ?`))
	return err
}

// q rewrites ? placeholders for PostgreSQL.
func (r *Registry) q(query string) string {
	if r.dialect != postgres {
		return query
	}
	var sb strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			fmt.Fprintf(&sb, "$%d", n)
			continue
		}
		sb.WriteRune(c)
	}
	return sb.String()
}

// migrations are applied in order, each once; the registry records how
// many it has applied. Append, never edit.
var migrations = []string{
	`CREATE TABLE accounts (
		id TEXT PRIMARY KEY,
		disabled BOOLEAN NOT NULL DEFAULT FALSE,
		created_at BIGINT NOT NULL
	)`,
	`CREATE TABLE credentials (
		kid TEXT PRIMARY KEY,
		account_id TEXT NOT NULL REFERENCES accounts(id),
		public TEXT NOT NULL,
		added_at BIGINT NOT NULL
	)`,
	`CREATE INDEX credentials_account ON credentials(account_id)`,
	// SPEC §7: a ticket is renewed at most once, whichever replica is asked.
	`CREATE TABLE renewed_tickets (
		hash TEXT PRIMARY KEY,
		until_at BIGINT NOT NULL
	)`,
	// The administrators' trail: appended to, never changed.
	`CREATE TABLE audit (
		at_ns BIGINT NOT NULL,
		actor TEXT NOT NULL,
		action TEXT NOT NULL,
		subject TEXT NOT NULL,
		detail TEXT NOT NULL
	)`,
	`CREATE INDEX audit_at ON audit(at_ns)`,
}

func (r *Registry) migrate(ctx context.Context) error {
	if _, err := r.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("accounts: migrating: %w", err)
	}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if r.dialect == postgres {
		// Replicas starting together must not migrate twice.
		if _, err := tx.ExecContext(ctx, `LOCK TABLE schema_version IN EXCLUSIVE MODE`); err != nil {
			return fmt.Errorf("accounts: migrating: %w", err)
		}
	}
	var version int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("accounts: migrating: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("accounts: the registry's schema (version %d) is newer than this build understands (%d)", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("accounts: migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, r.q(`UPDATE schema_version SET version = ?`), len(migrations)); err != nil {
		return err
	}
	return tx.Commit()
}

func validAccount(id string) error {
	if len(id) == 0 || len(id) > 256 {
		return ErrBadAccount
	}
	for _, c := range id {
		if c < 0x21 || c == 0x7f {
			return ErrBadAccount
		}
	}
	return nil
}

// Add binds a credential to an account, creating the account if needed.
// Binding a credential to the account it is already bound to is not an error.
func (r *Registry) Add(ctx context.Context, account string, cred *exchange.PublicKey) error {
	if err := validAccount(account); err != nil {
		return err
	}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := time.Now().Unix()
	var exists int
	err = tx.QueryRowContext(ctx, r.q(`SELECT 1 FROM accounts WHERE id = ?`), account).Scan(&exists)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = tx.ExecContext(ctx, r.q(`INSERT INTO accounts (id, disabled, created_at) VALUES (?, FALSE, ?)`), account, now)
	}
	if err != nil {
		return err
	}
	kid := cred.KeyID()
	var owner string
	err = tx.QueryRowContext(ctx, r.q(`SELECT account_id FROM credentials WHERE kid = ?`), kid).Scan(&owner)
	switch {
	case err == nil && owner == account:
		return tx.Commit()
	case err == nil:
		return ErrKeyInUse
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO credentials (kid, account_id, public, added_at) VALUES (?, ?, ?, ?)`),
		kid, account, b64(exchange.EncodeKey(cred).Public), now); err != nil {
		return err
	}
	return tx.Commit()
}

// Lookup returns the account a credential is bound to and whether the
// account is disabled.
func (r *Registry) Lookup(ctx context.Context, kid string) (account string, disabled bool, err error) {
	err = r.lookup.QueryRowContext(ctx, kid).Scan(&account, &disabled)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, ErrNotFound
	}
	return account, disabled, err
}

// Owner returns the account a credential is bound to, "" if it is bound to
// none, and whether that account is disabled: what the engine checks on
// every request and rekey (exchange.Accounts).
func (r *Registry) Owner(ctx context.Context, kid string) (account string, disabled bool, err error) {
	account, disabled, err = r.Lookup(ctx, kid)
	if errors.Is(err, ErrNotFound) {
		return "", false, nil
	}
	return account, disabled, err
}

// Disabled reports whether an account is disabled. A removed account counts
// as disabled.
func (r *Registry) Disabled(ctx context.Context, account string) (bool, error) {
	var disabled bool
	err := r.disabled.QueryRowContext(ctx, account).Scan(&disabled)
	if errors.Is(err, sql.ErrNoRows) {
		return true, nil
	}
	return disabled, err
}

// MarkRenewed records that the ticket whose hash is ticketHash has been
// renewed, until its rekey window closes at until, with one atomic insert
// every replica sharing the registry sees; first is false if it was
// recorded already. Records whose window has closed are deleted on the way.
func (r *Registry) MarkRenewed(ctx context.Context, ticketHash []byte, until time.Time) (first bool, err error) {
	now := time.Now().Unix()
	if _, err := r.db.ExecContext(ctx, r.q(`DELETE FROM renewed_tickets WHERE until_at < ?`), now); err != nil {
		return false, err
	}
	res, err := r.db.ExecContext(ctx, r.q(`INSERT INTO renewed_tickets (hash, until_at) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING`),
		b64(ticketHash), until.Unix())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// RemoveCredential unbinds one credential from an account: its sessions
// stop (within the engine's status lifetime) and it can exchange no more.
// The account stays, with its other credentials.
func (r *Registry) RemoveCredential(ctx context.Context, account, kid string) error {
	res, err := r.db.ExecContext(ctx, r.q(`DELETE FROM credentials WHERE account_id = ? AND kid = ?`), account, kid)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// SetDisabled disables or enables an account.
func (r *Registry) SetDisabled(ctx context.Context, account string, disabled bool) error {
	res, err := r.db.ExecContext(ctx, r.q(`UPDATE accounts SET disabled = ? WHERE id = ?`), disabled, account)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// Remove deletes an account and its credentials.
func (r *Registry) Remove(ctx context.Context, account string) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, r.q(`DELETE FROM credentials WHERE account_id = ?`), account); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, r.q(`DELETE FROM accounts WHERE id = ?`), account)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return tx.Commit()
}

// List returns every account with its credentials, ordered by identifier.
func (r *Registry) List(ctx context.Context) ([]Account, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT a.id, a.disabled, a.created_at, c.kid, c.public, c.added_at
		FROM accounts a LEFT JOIN credentials c ON c.account_id = a.id ORDER BY a.id, c.added_at, c.kid`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Account
	for rows.Next() {
		var (
			id          string
			disabled    bool
			created     int64
			kid, public sql.NullString
			added       sql.NullInt64
		)
		if err := rows.Scan(&id, &disabled, &created, &kid, &public, &added); err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].ID != id {
			out = append(out, Account{ID: id, Disabled: disabled, Created: time.Unix(created, 0)})
		}
		if kid.Valid {
			pub, _ := unb64(public.String)
			a := &out[len(out)-1]
			a.Credentials = append(a.Credentials, Credential{KID: kid.String, Public: pub, Added: time.Unix(added.Int64, 0)})
		}
	}
	return out, rows.Err()
}

func b64(b []byte) string            { return base64.RawURLEncoding.EncodeToString(b) }
func unb64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
