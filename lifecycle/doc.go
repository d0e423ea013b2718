// Package lifecycle owns what a signed index asks of a node and the states a
// release goes through there: deployments' selectors and maintenance
// windows, the plan they make for one node, the vendor's pack rules (a
// hotfix needs its service pack; a new service pack retires older hotfixes),
// and the names of the states nodes report up the tree. It is pure values
// and functions over package manifest's types.
package lifecycle
