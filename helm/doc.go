// Package helm owns the offline validation of the Helm chart in helm/agentrunner
// and of the container image recipe in deploy/Dockerfile. It has no code of its
// own: its tests lint and render the chart with a real helm binary, decode every
// rendered object strictly into the Kubernetes API types, check the restricted
// Pod Security profile, the migration hook, the PodDisruptionBudget, the values
// schema and the PrometheusRule (with promtool), and parse the Dockerfile.
package helm
