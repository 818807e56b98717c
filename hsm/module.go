package hsm

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// module is a PKCS#11 library loaded once per process. Every Token on it
// shares its initialisation: PKCS#11 allows one C_Initialize per process, and
// SoftHSM keeps process-wide state.
type module struct {
	path string
	// args is the initialisation string given to C_Initialize ("" for
	// none), in C memory; argsText the same in Go.
	args     unsafe.Pointer
	argsText string
	ck       Cryptoki

	// calls is held shared by every operation in the module and
	// exclusively while it is finalized and initialised again: finalizing
	// a module with calls inside it is library-dependent, and SoftHSM
	// crashes.
	calls sync.RWMutex
	// ops is held shared by every use of a session handle, from the check
	// that the handle belongs to this initialisation until the call
	// returns (Token.onSession), and exclusively to re-initialise: a
	// handle used across a re-initialisation may by then be the number of
	// another caller's new session. It is the module's, not a Token's,
	// because every Token on the module shares its initialisation.
	ops sync.RWMutex

	mu    sync.Mutex
	refs  int
	ready bool
	gen   uint64 // counts initialisations; sessions and handles belong to one
}

var modules = struct {
	sync.Mutex
	byPath map[string]*module
}{byPath: map[string]*module{}}

// loadModule returns the process's module for path, loading and initialising
// it on first use with the initialisation string args (passed in
// C_Initialize's reserved pointer, as NSS softokn needs; "" for none). A
// module is initialised once per process, so every user of a path must
// give the same args.
func loadModule(path, args string) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	m, ok := modules.byPath[path]
	switch {
	case !ok:
		ctx := pkcs11.New(path)
		if ctx == nil {
			return nil, fmt.Errorf("hsm: cannot load the PKCS#11 module %s: %s", path, loadFailure(path))
		}
		m = &module{path: path, ck: bind(ctx, path)}
		if args != "" {
			m.args = initArgs(args)
		}
		m.argsText = args
		modules.byPath[path] = m
	case m.argsText != args:
		m.mu.Lock()
		inUse := m.refs > 0
		if !inUse { // finalized by its last user: it starts afresh
			m.args, m.argsText = initArgs(args), args
		}
		m.mu.Unlock()
		if inUse {
			return nil, fmt.Errorf("hsm: the PKCS#11 module %s is already initialised in this process with other initialisation arguments", path)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.initLocked(m.ck); err != nil {
		return nil, err
	}
	m.refs++
	return m, nil
}

func (m *module) initLocked(ck Cryptoki) error {
	if m.ready {
		return nil
	}
	var opts []pkcs11.InitializeOption
	if m.args != nil {
		opts = append(opts, pkcs11.InitializeWithReserved(m.args))
	}
	err := ck.Initialize(opts...)
	if err != nil && !Is(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return fmt.Errorf("hsm: initialising the PKCS#11 module %s: %w", m.path, err)
	}
	m.ready = true
	m.gen++
	return nil
}

// guard holds calls shared for the length of each call but C_Initialize
// and C_Finalize, which reinitialise makes with it held exclusively.
func (m *module) guard(call string) (after func()) {
	if call == "Initialize" || call == "Finalize" {
		return func() {}
	}
	m.calls.RLock()
	return m.calls.RUnlock
}

// generation returns the current initialisation count.
func (m *module) generation() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

// reinitialise finalizes and initialises the module again, unless another
// caller already did so since generation seen. It is how the pool recovers
// from a module finalized behind its back, and how a token created after
// start-up becomes visible. ck is the calling token's view of the module
// (wrapped, in fault tests), through which the calls go.
func (m *module) reinitialise(seen uint64, ck Cryptoki) error {
	m.calls.Lock()
	defer m.calls.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gen != seen && m.ready {
		return nil
	}
	if err := ck.Finalize(); err != nil && !Is(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		return fmt.Errorf("hsm: finalizing the module: %w", err)
	}
	m.ready = false
	return m.initLocked(ck)
}

// release drops one user; the last one finalizes the module (the library
// stays loaded), so a later Open initialises it afresh.
func (m *module) release() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refs--
	if m.refs > 0 || !m.ready {
		return nil
	}
	m.ready = false
	if err := m.ck.Finalize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED)) {
		return err
	}
	return nil
}
