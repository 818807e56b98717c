// Package exchange is the jwcexchange engine (SPEC.md): both sides of the
// key exchange and the rekey — validation, negotiation, the hash-weighted
// agreement, the key schedule, the ticket and the witness — and both sides
// of requests made under a session: Server.Verify checks one, and
// Session.SignRequest makes one and checks its answer.
//
// The engine owns no private key. Key custody is the Keystore it is given,
// an interface defined here, as its consumer (implementations: package
// keystore in memory, keystore/p11 in a PKCS#11 token); the account
// registry is Accounts. It speaks no HTTP: the HTTP layer hands it a
// SignedRequest and maps its *Error to a status and a body.
package exchange
