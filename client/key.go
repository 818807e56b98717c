package client

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/wire"
)

// keyFile is the on-disk form of a credential.
type keyFile struct {
	Private wire.Bytes      `json:"Private"`
	Public  *wire.PublicKey `json:"Public"`
}

// GenerateKey makes a credential of profile p and writes it to path (mode
// 0600, never overwriting a file). It returns the key.
func GenerateKey(path string, p exchange.Profile) (*exchange.ClientKey, error) {
	k, err := exchange.GenerateClientKey(rand.Reader, p)
	if err != nil {
		return nil, err
	}
	priv := k.PrivateBytes()
	defer clear(priv)
	b, err := json.MarshalIndent(keyFile{Private: priv, Public: exchange.EncodeKey(k.Public())}, "", "  ")
	if err != nil {
		return nil, err
	}
	defer clear(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("client: writing the key: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return k, err
}

// LoadKey reads a credential written by GenerateKey.
func LoadKey(path string) (*exchange.ClientKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("client: reading the key: %w", err)
	}
	defer clear(b)
	var kf keyFile
	if err := wire.Unmarshal(b, &kf); err != nil {
		return nil, fmt.Errorf("client: %s is not a Custos credential: %v", path, err)
	}
	defer clear(kf.Private)
	var k *exchange.ClientKey
	if kf.Public != nil && kf.Public.Type == wire.KeyECDH {
		s, err := p256.NewScalar(kf.Private)
		if err != nil {
			return nil, fmt.Errorf("client: %s: %v", path, err)
		}
		k = exchange.NewClientKeyP256(s)
	} else {
		s, err := group.NewScalar(kf.Private)
		if err != nil {
			return nil, fmt.Errorf("client: %s: %v", path, err)
		}
		k = exchange.NewClientKey(s)
	}
	if kf.Public != nil && kf.Public.KID != k.Public().KeyID() {
		return nil, errors.New("client: the key file's public key does not match its private key")
	}
	return k, nil
}

// PublicKeyJSON returns the credential's {"PublicKeyDH":…} or
// {"PublicKeyECDH":…} object, which the
// service's operator registers.
func PublicKeyJSON(k *exchange.ClientKey) ([]byte, error) {
	return json.Marshal(exchange.EncodeKey(k.Public()))
}
