package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"text/tabwriter"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/keystore"
	"github.com/custos-kx/custos/keystore/p11"
)

func cmdInit(ctx context.Context, c *config, log *slog.Logger, out io.Writer) error {
	tok, ks, err := c.openKeystore(ctx, log)
	if err != nil {
		return err
	}
	defer tok.Close()
	active, err := ks.Init(ctx)
	if err != nil {
		return err
	}
	for _, k := range active {
		fmt.Fprintf(out, "%s credential %s\n", k.Profile, k.ID)
	}
	report, err := ks.SelfTest(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "the token %s\n", report)
	return nil
}

func cmdKeys(ctx context.Context, c *config, log *slog.Logger, verb string, out io.Writer) error {
	tok, ks, err := c.openKeystore(ctx, log)
	if err != nil {
		return err
	}
	defer tok.Close()
	audit := func(action, subject, detail string) error { return nil }
	if verb != "list" {
		reg, err := c.openRegistry(ctx, log)
		if err != nil {
			return err
		}
		defer reg.Close()
		audit = func(action, subject, detail string) error { return record(ctx, reg, log, action, subject, detail) }
	}
	switch verb {
	case "list":
		keys, err := ks.Keys(ctx)
		if err != nil {
			return err
		}
		report, testErr := ks.SelfTest(ctx)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tTYPE\tID\tCREATED\tACTIVE")
		for _, k := range keys {
			typ := k.Profile.String()
			if k.Kind == keystore.KindTicket {
				typ = map[ticket.Scheme]string{ticket.GCM: "aes-gcm", ticket.CBCHMAC: "aes-cbc-hmac"}[k.Scheme]
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", k.Kind, typ, k.ID, k.Created.UTC().Format(time.RFC3339), k.Active)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if testErr != nil {
			_, err = fmt.Fprintf(out, "the token cannot serve an exchange: %v\n", testErr)
			return err
		}
		_, err = fmt.Fprintf(out, "the token %s\n", report)
		return err
	case "rotate-ticket-key":
		k, err := ks.RotateTicketKey(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "new ticket key %s is active; older keys open their tickets until pruned\n", k.ID)
		return audit("keys rotate-ticket-key", k.ID, "")
	case "rotate-credential":
		profiles, err := rotatedProfiles(ctx, ks, c.Keys.RotateCred.Profile)
		if err != nil {
			return err
		}
		for _, p := range profiles {
			k, err := ks.RotateCredential(ctx, p)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "new %s service credential %s is active; clients that pinned the old one must re-pin\n", p, k.ID)
			if err := audit("keys rotate-credential", k.ID, p.String()); err != nil {
				return err
			}
		}
		return nil
	case "prune":
		window := c.pruneDuration()
		if floor := c.ticketLifetime(); window < floor {
			return usageError(fmt.Sprintf("--window %s is shorter than a ticket can live (session lifetime + rekey window = %s): keys retired since could still open live tickets", window, floor))
		}
		pruned, err := ks.Prune(ctx, window, c.Keys.Prune.DryRun)
		verb := "deleted"
		if c.Keys.Prune.DryRun {
			verb = "would delete"
		}
		for _, k := range pruned {
			fmt.Fprintf(out, "%s %s %s (created %s, retired %s)\n", verb, k.Kind, k.ID, k.Created.UTC().Format(time.RFC3339), k.Retired.UTC().Format(time.RFC3339))
			if !c.Keys.Prune.DryRun {
				if aerr := audit("keys prune", k.ID, string(k.Kind)+" retired "+k.Retired.UTC().Format(time.RFC3339)); aerr != nil {
					return aerr
				}
			}
		}
		if err != nil {
			return err
		}
		if len(pruned) == 0 {
			fmt.Fprintf(out, "no key was retired more than %s ago\n", window)
		}
	}
	return nil
}

// rotatedProfiles is the profile named, or for "all" every profile the
// token has an active credential of.
func rotatedProfiles(ctx context.Context, ks *p11.Keystore, name string) ([]exchange.Profile, error) {
	if name != "all" {
		p, err := exchange.ParseProfile(name)
		return []exchange.Profile{p}, err
	}
	var served []exchange.Profile
	for _, p := range exchange.Profiles {
		if _, err := ks.Credential(ctx, p); err == nil {
			served = append(served, p)
		}
	}
	if len(served) == 0 {
		return nil, errors.New("the token holds no service credential; run custosd init first")
	}
	return served, nil
}

// pruneDuration is --window, else --prune-window, else the longest a
// ticket can stay useful: the rekey window plus a session lifetime.
func (c *config) pruneDuration() time.Duration {
	switch {
	case c.Keys.Prune.Window != 0:
		return c.Keys.Prune.Window
	case c.PruneWindow != 0:
		return c.PruneWindow
	}
	return c.ticketLifetime()
}

// ticketLifetime is the longest a ticket can be used: a key retired less
// than this ago may still open a live ticket.
func (c *config) ticketLifetime() time.Duration { return c.RekeyWindow + c.Session }

// record appends an administrative action to the registry's audit trail,
// with the OS user who ran it (and who ran sudo), and logs it as one line.
func record(ctx context.Context, reg *accounts.Registry, log *slog.Logger, action, subject, detail string) error {
	actor := "unknown"
	if u, err := user.Current(); err == nil {
		actor = u.Username
	}
	// Under sudo the OS user is root for every administrator; sudo says
	// who it was.
	if by := os.Getenv("SUDO_USER"); by != "" && by != actor {
		actor += " (sudo by " + by + ")"
	}
	log.Info("audit", "action", action, "subject", subject, "detail", detail, "actor", actor)
	if err := reg.Audit(ctx, accounts.AuditEntry{At: time.Now(), Actor: actor, Action: action, Subject: subject, Detail: detail}); err != nil {
		return fmt.Errorf("done, but recording it in the audit trail failed: %w", err)
	}
	return nil
}

// cmdAudit lists the audit trail, from --since on.
func cmdAudit(ctx context.Context, c *config, log *slog.Logger, out io.Writer) error {
	var since time.Time
	if c.Audit.Since != 0 {
		since = time.Now().Add(-c.Audit.Since)
	}
	reg, err := c.openRegistry(ctx, log)
	if err != nil {
		return err
	}
	defer reg.Close()
	entries, err := reg.AuditSince(ctx, since)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tWHO\tACTION\tSUBJECT\tDETAIL")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.At.UTC().Format("2006-01-02T15:04:05.000Z07:00"), e.Actor, e.Action, e.Subject, e.Detail)
	}
	return tw.Flush()
}

func cmdAccount(ctx context.Context, c *config, log *slog.Logger, verb string, out io.Writer) error {
	reg, err := c.openRegistry(ctx, log)
	if err != nil {
		return err
	}
	defer reg.Close()
	a := &c.Account
	switch verb {
	case "add":
		account := a.Add.Account
		e, err := readCredential(a.Add.Credential)
		if err != nil {
			return err
		}
		if err := reg.Add(ctx, account, e); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s may now exchange with credential %s\n", account, e.KeyID())
		return record(ctx, reg, log, "account add", account, e.KeyID())
	case "list":
		list, err := reg.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ACCOUNT\tSTATUS\tCREDENTIAL")
		for _, a := range list {
			status := "enabled"
			if a.Disabled {
				status = "disabled"
			}
			if len(a.Credentials) == 0 {
				fmt.Fprintf(tw, "%s\t%s\t-\n", a.ID, status)
			}
			for _, cr := range a.Credentials {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", a.ID, status, cr.KID)
			}
		}
		return tw.Flush()
	case "disable", "enable":
		account := a.Disable.Account
		if verb == "enable" {
			account = a.Enable.Account
		}
		if err := reg.SetDisabled(ctx, account, verb == "disable"); err != nil {
			return accountErr(account, err)
		}
		fmt.Fprintf(out, "%s %sd\n", account, verb)
		return record(ctx, reg, log, "account "+verb, account, "")
	case "remove":
		if err := reg.Remove(ctx, a.Remove.Account); err != nil {
			return accountErr(a.Remove.Account, err)
		}
		fmt.Fprintf(out, "%s removed\n", a.Remove.Account)
		return record(ctx, reg, log, "account remove", a.Remove.Account, "")
	case "remove-credential":
		account, kid := a.RemoveCredential.Account, a.RemoveCredential.KID
		if err := reg.RemoveCredential(ctx, account, kid); err != nil {
			if errors.Is(err, accounts.ErrNotFound) {
				return fmt.Errorf("no credential %s on account %q (see custosd account list)", kid, account)
			}
			return err
		}
		fmt.Fprintf(out, "credential %s removed from %s; its sessions stop within 30 s\n", kid, account)
		return record(ctx, reg, log, "account remove-credential", account, kid)
	}
	return nil
}

// credentialShape is what account add registers: the public key custos
// keygen printed, of either profile.
const credentialShape = `the {"PublicKeyDH":…} or {"PublicKeyECDH":…} object that custos keygen printed`

// readCredential reads the public key in file, refusing with a sentence
// that says what the file should have held.
func readCredential(file string) (*exchange.PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the credential: %w", err)
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(b, &members) == nil {
		if _, ok := members["Private"]; ok {
			return nil, fmt.Errorf("%s is a credential with its private key, which stays with its owner: register its public key, %s beside it (custos keygen --out alice.key > alice.pub)", file, credentialShape)
		}
		if members["PublicKeyDH"] == nil && members["PublicKeyECDH"] == nil {
			return nil, fmt.Errorf("%s does not hold a public key: it should hold %s", file, credentialShape)
		}
	}
	var k wire.PublicKey
	if err := wire.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("%s does not hold a public key, %s: %v", file, credentialShape, err)
	}
	e, err := exchange.ParseKey(&k, "credential")
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	return e, nil
}

func accountErr(account string, err error) error {
	if errors.Is(err, accounts.ErrNotFound) {
		return fmt.Errorf("no account %q", account)
	}
	return err
}
