package lifecycle

// The states of a release deployed to a node:
//
//	pending → downloading → downloaded → installing → installed | restart-required | failed
//	                        ↘ blocked (a prerequisite is missing; waits, downloaded)
//	refused (never on this node: wrong target or release line)
//	retired (was installed; a newer service pack replaced it)
//	withdrawn (withdrawn from the index before it was installed here)
//	uninstalled (was installed; withdrawn, and its uninstall command ran)
//
// Download errors are retried by the agent with a backoff; install failures
// stay failed, with the reason, until an operator orders a retry: a hook that
// failed once usually fails again until someone fixes the cause.
const (
	Pending         = "pending"     // targeted, not yet downloading
	Downloading     = "downloading" // chunks arriving
	Downloaded      = "downloaded"  // every chunk here; waiting for a window or an operator
	Installing      = "installing"
	Installed       = "installed"
	Failed          = "failed"           // the install failed; the reason says why
	Blocked         = "blocked"          // waiting for a prerequisite; the reason names it
	Refused         = "refused"          // never on this node; the reason says why
	RestartRequired = "restart-required" // installed; takes effect when the machine restarts
	Retired         = "retired"          // was installed; a newer service pack replaced it
	Withdrawn       = "withdrawn"        // withdrawn from the index before it was installed here
	Uninstalled     = "uninstalled"      // was installed; withdrawn, and its uninstall command ran
)

var states = map[string]bool{
	Pending: true, Downloading: true, Downloaded: true, Installing: true,
	Installed: true, Failed: true, Blocked: true, Refused: true,
	RestartRequired: true, Retired: true, Withdrawn: true, Uninstalled: true,
}

// ValidState reports whether s names a state of this lifecycle.
func ValidState(s string) bool { return states[s] }

// InEffect reports whether a release in state s is installed on the node.
func InEffect(s string) bool { return s == Installed || s == RestartRequired }

// Settled reports whether a release in state s needs no more work from the
// node until something changes: installed, retired, refused, or failed
// (which waits for an operator's retry).
func Settled(s string) bool {
	switch s {
	case Installed, RestartRequired, Retired, Refused, Failed, Withdrawn, Uninstalled:
		return true
	}
	return false
}
