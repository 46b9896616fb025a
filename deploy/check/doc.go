// Package check holds the offline checks of proxy-hopper's deployment
// artefacts (deploy/): the Helm chart rendered for each values variant and
// decoded strictly into the Kubernetes API types, the Compose examples, and
// the release binaries of make dist. It is a module of its own so that the
// Kubernetes and Helm dependencies stay out of the agent's module; helm is
// pinned here as a tool (go tool helm). scripts/deploy-check.sh runs it.
package check
