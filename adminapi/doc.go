// Package adminapi owns an agent's admin API: its routes and their request
// and response types, the Server that serves them over what an agent's role
// implements (Agent, Origin, Fleet, Node), the Client that the CLI and the
// tests share, and the classes of errors, each mapped once to an HTTP status
// and to the CLI's exit code. It guards the API against requests a web page
// could forge: host names, cross-origin posts, content types and the token.
package adminapi
