package metaserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Volume access control: CHAP credentials and initiator allowlists. Every
// change bumps the generation, so the volume's host applies it at once, and
// records a volume_auth_changed event that names users and initiators but
// never a secret.

// The sealed secret columns, which are also the purposes they are sealed for.
const (
	colCHAPSecret   = "chap_secret"
	colMutualSecret = "mutual_secret"
)

// errUnchanged ends a mutation that would change nothing: its transaction
// rolls back, so neither the generation nor the event log moves.
var errUnchanged = errors.New("unchanged")

// openSecret opens a volume's sealed secret column; nil is no secret.
func (st *store) openSecret(volume, column string, sealed []byte) (string, error) {
	if sealed == nil {
		return "", nil
	}
	plain, err := st.box.open(sealed, secretPurpose(volume, column))
	if err != nil {
		return "", fmt.Errorf("the %s of volume %q cannot be opened with this cluster's key (set it again with chunkraid volume chap): %w", column, volume, err)
	}
	return string(plain), nil
}

// sealSecret seals a secret for a volume's column; "" is no secret (NULL).
func (st *store) sealSecret(volume, column, secret string) []byte {
	if secret == "" {
		return nil
	}
	return st.box.seal([]byte(secret), secretPurpose(volume, column))
}

// lockVolume locks a volume's row for a change and returns its ID.
func lockVolume(ctx context.Context, tx pgx.Tx, name string) (int64, error) {
	var id int64
	if err := tx.QueryRow(ctx, `SELECT id FROM volumes WHERE name = $1 FOR UPDATE`, name).Scan(&id); err != nil {
		return 0, notFound(err, "volume %q does not exist", name)
	}
	return id, nil
}

func authEvent(volume, msg string) event {
	return event{Kind: api.EventVolumeAuthChanged, Subject: "volume/" + volume, Volume: volume, Message: msg}
}

// setCHAP stores the CHAP credentials of a volume, sealed. req is validated.
func (st *store) setCHAP(ctx context.Context, name string, req api.SetCHAPRequest) (*api.Volume, error) {
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		id, err := lockVolume(ctx, tx, name)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			UPDATE volumes SET chap_user = $2, chap_secret = $3, mutual_user = $4, mutual_secret = $5
			WHERE id = $1`, id, req.User, st.sealSecret(name, colCHAPSecret, req.Secret),
			req.MutualUser, st.sealSecret(name, colMutualSecret, req.MutualSecret))
		if err != nil {
			return fmt.Errorf("store CHAP credentials: %w", err)
		}
		if out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name}); err != nil {
			return err
		}
		msg := fmt.Sprintf("CHAP set: initiators log in as user %s (one-way)", req.User)
		if req.MutualUser != "" {
			msg = fmt.Sprintf("CHAP set: initiators log in as user %s; mutual: the target answers as user %s", req.User, req.MutualUser)
		}
		return addEvents(ctx, tx, authEvent(name, msg))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// clearCHAP removes the CHAP credentials of a volume. A volume without CHAP
// is left alone.
func (st *store) clearCHAP(ctx context.Context, name string) error {
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var user string
		err := tx.QueryRow(ctx, `SELECT chap_user FROM volumes WHERE name = $1 FOR UPDATE`, name).Scan(&user)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		if user == "" {
			return errUnchanged
		}
		_, err = tx.Exec(ctx, `
			UPDATE volumes SET chap_user = '', chap_secret = NULL, mutual_user = '', mutual_secret = NULL
			WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("clear CHAP credentials: %w", err)
		}
		return addEvents(ctx, tx, authEvent(name, fmt.Sprintf("CHAP cleared (was user %s): initiators log in without authentication", user)))
	})
	if errors.Is(err, errUnchanged) {
		return nil
	}
	return err
}

// updateInitiators changes the allowlist of a volume: disallow, then allow,
// or with clear empty it. allow and disallow are canonical. Disallowing a
// name that is not listed, or the last names of the list, is refused.
func (st *store) updateInitiators(ctx context.Context, name string, allow, disallow []string, clearAll bool) (*api.Volume, error) {
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var (
			id  int64
			old []string
		)
		err := tx.QueryRow(ctx, `SELECT id, allowed_initiators FROM volumes WHERE name = $1 FOR UPDATE`, name).Scan(&id, &old)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		list, msg, err := changeAllowlist(name, old, allow, disallow, clearAll)
		if err != nil {
			return err
		}
		if out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name}); err != nil {
			return err
		}
		if msg == "" {
			return errUnchanged
		}
		if _, err := tx.Exec(ctx, `UPDATE volumes SET allowed_initiators = $2 WHERE id = $1`, id, list); err != nil {
			return fmt.Errorf("store the initiator allowlist: %w", err)
		}
		out.Auth.AllowedInitiators = list
		return addEvents(ctx, tx, authEvent(name, msg))
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return nil, err
	}
	return out, nil
}

// changeAllowlist applies a change to the allowlist old of volume and
// returns the new list, sorted, and a message for the event ("" if nothing
// changed).
func changeAllowlist(volume string, old, allow, disallow []string, clearAll bool) ([]string, string, error) {
	if clearAll {
		if len(old) == 0 {
			return []string{}, "", nil
		}
		return []string{}, fmt.Sprintf("initiator allowlist cleared (it held %s): every initiator may log in", strings.Join(old, ", ")), nil
	}
	var missing []string
	for _, n := range disallow {
		if !slices.Contains(old, n) {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, "", api.Errorf(api.CodeNotFound, "initiator %s is not in the allowlist of volume %q (%s): nothing was changed",
			strings.Join(missing, ", "), volume, describeAllowlist(old))
	}
	list := slices.DeleteFunc(slices.Clone(old), func(n string) bool { return slices.Contains(disallow, n) })
	var added []string
	for _, n := range allow {
		if !slices.Contains(list, n) {
			list = append(list, n)
			added = append(added, n)
		}
	}
	if len(list) == 0 {
		return nil, "", api.Errorf(api.CodeConflict,
			"disallowing %s would empty the allowlist of volume %q, and an empty allowlist admits every initiator: allow the initiators that keep access first, or clear the list on purpose (chunkraid volume disallow %s --all)",
			strings.Join(disallow, ", "), volume, volume)
	}
	if len(list) > api.MaxAllowedInitiators {
		return nil, "", invalid("the allowlist of volume %q would hold %d initiators: at most %d are allowed", volume, len(list), api.MaxAllowedInitiators)
	}
	slices.Sort(list)
	slices.Sort(added)
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "allowed "+strings.Join(added, ", "))
	}
	if len(disallow) > 0 {
		parts = append(parts, "disallowed "+strings.Join(slices.Sorted(slices.Values(disallow)), ", "))
	}
	if len(parts) == 0 {
		return list, "", nil
	}
	return list, fmt.Sprintf("initiator allowlist: %s; %s", strings.Join(parts, "; "), describeAllowlist(list)), nil
}

// describeAllowlist says who may log in under an allowlist.
func describeAllowlist(list []string) string {
	switch len(list) {
	case 0:
		return "it is empty: every initiator may log in"
	case 1:
		return "only " + list[0] + " may log in"
	}
	return fmt.Sprintf("%d initiators may log in", len(list))
}

func (s *Server) setVolumeCHAP(w http.ResponseWriter, r *http.Request) {
	var req api.SetCHAPRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateSetCHAP(req); err != nil {
		s.writeError(w, r, err)
		return
	}
	name := chi.URLParam(r, "name")
	v, err := s.st.setCHAP(r.Context(), name, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume CHAP set", "name", name, "user", req.User, "mutual_user", req.MutualUser)
	s.writeJSON(w, http.StatusOK, v)
}

func (s *Server) clearVolumeCHAP(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if err := s.st.clearCHAP(r.Context(), name); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume CHAP cleared", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) updateInitiators(w http.ResponseWriter, r *http.Request) {
	var req api.InitiatorsRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	allow, disallow, err := validateInitiatorsRequest(req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	name := chi.URLParam(r, "name")
	v, err := s.st.updateInitiators(r.Context(), name, allow, disallow, req.Clear)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume initiator allowlist changed", "name", name, "allow", len(allow), "disallow", len(disallow),
		"clear", req.Clear, "allowed", len(v.Auth.AllowedInitiators))
	s.writeJSON(w, http.StatusOK, v)
}
