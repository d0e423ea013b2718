package adminapi

import (
	"errors"
	"net/http"
	"os"

	"github.com/patchctl/patchctl/manifest"
	"github.com/patchctl/patchctl/p2p"
	"github.com/patchctl/patchctl/store"
)

// Class is what kind of failure an error is, as the person who sees it acts
// on it. Every error an agent answers with, and every error the CLI exits
// with, is classified here once: Classify maps it to a class, and the class
// to an HTTP status and to the CLI's exit code (documented in the README).
type Class int

const (
	// Internal is anything else: I/O, permissions, a full disk, a peer
	// that cannot be reached. HTTP 500, exit 4.
	Internal Class = iota
	// BadData: something checked is bad (a signature, an expiry, a
	// rollback, a corrupt or mismatching chunk). HTTP 422, exit 1.
	BadData
	// Usage: the request or the command line is wrong. HTTP 400, exit 2.
	Usage
	// NotFound: the release, file, key or peer named does not exist.
	// HTTP 404, exit 3.
	NotFound
	// Conflict: someone changed the thing first (another deploy signed
	// the same index version); doing it again on the fresh state works.
	// HTTP 409, exit 5.
	Conflict
	// WrongRole: this agent's role does not do that (an install asked of
	// the origin). HTTP 400, exit 2.
	WrongRole
	// Unauthorized: the admin token is missing or wrong. HTTP 401, exit 2.
	Unauthorized
	// Forbidden: a request from a web page of another origin, or for a
	// host name this agent does not answer to. HTTP 403, exit 2.
	Forbidden
	// TooLarge: a body over its bound. HTTP 413, exit 1.
	TooLarge
)

// Sentinels of the classes that have no error of another package: wrap one
// with %w to give an error its class.
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("changed meanwhile; run the command again")
	ErrWrongRole    = errors.New("not done by this agent's role")
	ErrUsage        = errors.New("bad request")
	ErrUnauthorized = errors.New("a valid admin token is required")
	ErrForbidden    = errors.New("forbidden")
	ErrTooLarge     = errors.New("request body too large")
	ErrBadData      = errors.New("bad data")
)

// classOf lists, in order, the errors that decide a class: the first that
// an error wraps wins, so an error that is both corrupt data and not found
// (a fetch whose only peer lied) is bad data.
var classOf = []struct {
	err   error
	class Class
}{
	{ErrUnauthorized, Unauthorized},
	{ErrForbidden, Forbidden},
	{ErrWrongRole, WrongRole},
	{ErrUsage, Usage},
	{ErrConflict, Conflict},
	{ErrTooLarge, TooLarge},
	{ErrBadData, BadData},
	{manifest.ErrUnsigned, BadData},
	{manifest.ErrUnknownKey, BadData},
	{manifest.ErrThreshold, BadData},
	{manifest.ErrExpired, BadData},
	{manifest.ErrTampered, BadData},
	{manifest.ErrRollback, BadData},
	{manifest.ErrInvalid, BadData},
	{manifest.ErrUnknownSchema, BadData},
	{manifest.ErrTooLarge, BadData},
	{manifest.ErrChunkMismatch, BadData},
	{store.ErrCorrupt, BadData},
	{store.ErrMismatch, BadData},
	{ErrNotFound, NotFound},
	{store.ErrNotFound, NotFound},
	{os.ErrNotExist, NotFound},
	{p2p.ErrNotFound, NotFound},
	{p2p.ErrNoSource, NotFound},
}

// Classify returns err's class (Internal for nil or anything unknown).
func Classify(err error) Class {
	if err == nil {
		return Internal
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Class
	}
	for _, c := range classOf {
		if errors.Is(err, c.err) {
			return c.class
		}
	}
	return Internal
}

// HTTPStatus is the status an agent answers an error of class c with.
func (c Class) HTTPStatus() int {
	switch c {
	case BadData:
		return http.StatusUnprocessableEntity
	case Usage, WrongRole:
		return http.StatusBadRequest
	case NotFound:
		return http.StatusNotFound
	case Conflict:
		return http.StatusConflict
	case Unauthorized:
		return http.StatusUnauthorized
	case Forbidden:
		return http.StatusForbidden
	case TooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

// Exit codes of the CLI, as the README's table gives them.
const (
	ExitOK        = 0
	ExitBadData   = 1 // something checked is bad: signature, expiry, rollback, corrupt or missing chunk
	ExitUsage     = 2 // the command line is wrong, or names an agent that does not do that
	ExitNotFound  = 3 // the release, file or key named does not exist
	ExitOperation = 4 // anything else: I/O, permissions, a full disk, an unreachable agent
	ExitConflict  = 5 // changed meanwhile by someone else; run the command again
)

// ExitCode is the exit code of a command that failed with an error of
// class c.
func (c Class) ExitCode() int {
	switch c {
	case BadData, TooLarge:
		return ExitBadData
	case Usage, WrongRole, Unauthorized, Forbidden:
		return ExitUsage
	case NotFound:
		return ExitNotFound
	case Conflict:
		return ExitConflict
	}
	return ExitOperation
}

// classOfStatus is the class a client gives an error answer.
func classOfStatus(status int) Class {
	switch status {
	case http.StatusUnprocessableEntity:
		return BadData
	case http.StatusBadRequest:
		return Usage
	case http.StatusNotFound:
		return NotFound
	case http.StatusConflict:
		return Conflict
	case http.StatusUnauthorized:
		return Unauthorized
	case http.StatusForbidden:
		return Forbidden
	case http.StatusRequestEntityTooLarge:
		return TooLarge
	}
	return Internal
}

// sentinel returns the error of class c that errors.Is matches.
func (c Class) sentinel() error {
	switch c {
	case BadData:
		return ErrBadData
	case Usage:
		return ErrUsage
	case NotFound:
		return ErrNotFound
	case Conflict:
		return ErrConflict
	case WrongRole:
		return ErrWrongRole
	case Unauthorized:
		return ErrUnauthorized
	case Forbidden:
		return ErrForbidden
	case TooLarge:
		return ErrTooLarge
	}
	return nil
}

// Error is an error answer of the admin API, as the client returns it: the
// agent's message and the class of its status, so that the CLI exits as it
// would had the error happened in the CLI itself.
type Error struct {
	Status  int    // HTTP status
	Class   Class  // the class of Status
	Message string // the agent's message
	// Kind, if the agent gave one, is its class by name (see
	// APIError.Kind), which tells apart classes that share a status.
	Kind string
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the sentinel of e's class.
func (e *Error) Unwrap() error { return e.Class.sentinel() }

// APIError is the body of every error answer.
type APIError struct {
	Error string `json:"error"`
	// Kind names the class: "bad-data", "usage", "not-found",
	// "conflict", "wrong-role", "unauthorized", "forbidden",
	// "too-large" or "internal".
	Kind string `json:"kind"`
}

var kindNames = map[Class]string{
	Internal: "internal", BadData: "bad-data", Usage: "usage", NotFound: "not-found",
	Conflict: "conflict", WrongRole: "wrong-role", Unauthorized: "unauthorized",
	Forbidden: "forbidden", TooLarge: "too-large",
}

func (c Class) String() string { return kindNames[c] }

// classNamed returns the class of a kind name, if it is one.
func classNamed(kind string) (Class, bool) {
	for c, name := range kindNames {
		if name == kind {
			return c, true
		}
	}
	return 0, false
}
