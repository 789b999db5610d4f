package helm

import (
	"buko.app/agentrunner/deploy"
	"buko.app/agentrunner/internal/testsupport"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "agentrunner"
	kubeVersion = "1.37.0" // the Kubernetes minor of k8s.io/api v0.37, stamped into helm by deploy/dev/helm.sh
	release     = "rel"
	namespace   = "agentrunner"
)

// contractEnv is every environment variable the chart may set: the binary's
// configuration contract (docs/architecture.md §10, docs/deploy.md). A name the chart
// renders that is not here fails the test, so a typo cannot ship.
var contractEnv = []string{
	"DATABASE_URL",
	"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE",
	"TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA", "TEMPORAL_TLS_SERVER_NAME",
	"BUKO_API_URL", "BUKO_GATEWAY_URL",
	"AGENTRUNNER_CIPHER", "AGENTRUNNER_KEYRING",
	"VAULT_ADDR", "VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_TOKEN",
	"AGENTRUNNER_VAULT_AUTH", "AGENTRUNNER_VAULT_K8S_ROLE", "AGENTRUNNER_VAULT_K8S_MOUNT",
	"AGENTRUNNER_VAULT_APPROLE_ROLE_ID", "AGENTRUNNER_VAULT_APPROLE_SECRET_ID_FILE",
	"AGENTRUNNER_TRANSIT_MOUNT", "AGENTRUNNER_TRANSIT_KEY",
	"AGENTRUNNER_SHARDS", "AGENTRUNNER_LEASE_TTL", "AGENTRUNNER_DRAIN_TIMEOUT",
	"AGENTRUNNER_ADMIN_ADDR", "AGENTRUNNER_METRICS_ADDR", "AGENTRUNNER_ADMIN_TOKEN_FILE",
	"AGENTRUNNER_LOG_FORMAT", "AGENTRUNNER_LOG_LEVEL", "AGENTRUNNER_RUNNER_ID", "AGENTRUNNER_WORKER",
	"AGENTRUNNER_AGENT_DENY_PRIVATE",
}

// secretEnv must only ever come from a Secret (valueFrom.secretKeyRef).
var secretEnv = []string{"DATABASE_URL", "VAULT_TOKEN"}

// ciValueFiles are the example values files the issue asks for; more may exist.
var ciValueFiles = []string{"minimal-values.yaml", "production-values.yaml", "separate-workers-values.yaml"}

// repoRoot is the module root (this package lives in <root>/helm).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatalf("repo root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root %s has no go.mod: %v", root, err)
	}
	return root
}

func helmBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("AGENTRUNNER_HELM_BIN"); p != "" {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			t.Fatalf("AGENTRUNNER_HELM_BIN=%s is not a file (%v)", p, err)
		}
		return p
	}
	script := filepath.Join(repoRoot(t), "deploy", "dev", "helm.sh")
	out, err := exec.CommandContext(t.Context(), "bash", script, "bin").Output()
	if p := strings.TrimSpace(string(out)); err == nil && p != "" {
		return p
	}
	testsupport.Unavailable(t, "helm", "no helm binary found", "set AGENTRUNNER_HELM_BIN or run `bash deploy/dev/helm.sh build` (make services does)")
	return ""
}

// runHelm runs helm with private config/cache folders and returns stdout;
// a non-zero exit is returned as an error carrying stderr.
func runHelm(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// valueSet is one way of installing the chart: the defaults, or one ci/ file.
type valueSet struct {
	name string
	file string // "" for the chart defaults
}

func (v valueSet) args() []string {
	if v.file == "" {
		return nil
	}
	return []string{"-f", v.file}
}

func valueSets(t *testing.T) []valueSet {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range ciValueFiles {
		if !slices.Contains(files, filepath.Join(chartDir, "ci", want)) {
			t.Errorf("missing example values file %s/ci/%s", chartDir, want)
		}
	}
	sets := []valueSet{{name: "default"}}
	for _, f := range files {
		sets = append(sets, valueSet{name: strings.TrimSuffix(filepath.Base(f), "-values.yaml"), file: f})
	}
	return sets
}

func TestHelmLintStrict(t *testing.T) {
	bin := helmBin(t)
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", chartDir, "--kube-version", kubeVersion, "--namespace", namespace}, vs.args()...)
			out, err := runHelm(t, bin, args...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Fatalf("helm lint output does not report success:\n%s", out)
			}
		})
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	bin := helmBin(t)
	cases := []struct {
		name string
		set  []string // --set arguments
		want string   // in the error
	}{
		{"misspelt top-level key", []string{"--set", "replica=3"}, "replica"},
		{"misspelt nested key", []string{"--set", "runner.drainTimeoutSecond=30"}, "drainTimeoutSecond"},
		{"misspelt deep key", []string{"--set", "vault.kubernetes.rol=x"}, "rol"},
		{"wrong type", []string{"--set-string", "replicas=three"}, "replicas"},
		{"unknown enum", []string{"--set", "cipher=plaintext"}, "cipher"},
		{"secret value in values", []string{"--set", "database.password=hunter2"}, "password"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, verb := range [][]string{
				{"lint", "--strict", chartDir, "--kube-version", kubeVersion},
				{"template", release, chartDir, "--kube-version", kubeVersion},
			} {
				out, err := runHelm(t, bin, append(verb, c.set...)...)
				if err == nil {
					t.Fatalf("helm %s accepted %v:\n%s", verb[0], c.set, out)
				}
				if !strings.Contains(err.Error(), c.want) {
					t.Errorf("helm %s rejected %v, but the error does not name %q:\n%v", verb[0], c.set, c.want, err)
				}
			}
		})
	}
}

func TestTemplateRejectsInconsistentValues(t *testing.T) {
	bin := helmBin(t)
	cases := []struct {
		name string
		set  []string
		want string
	}{
		{"grace period not longer than drain", []string{"--set", "runner.drainTimeoutSeconds=60", "--set", "runner.terminationGracePeriodSeconds=60"}, "terminationGracePeriodSeconds"},
		{"local cipher without acknowledgement", []string{"--set", "cipher=local", "--set", "keyring.existingSecret=k"}, "nonProductionAcknowledged"},
		{"local cipher without keyring", []string{"--set", "cipher=local", "--set", "keyring.nonProductionAcknowledged=true"}, "keyring.existingSecret"},
		{"approle without secret", []string{"--set", "vault.auth=approle"}, "vault.approle.existingSecret"},
		{"temporal tls without secret", []string{"--set", "temporal.tls.enabled=true"}, "temporal.tls.existingSecret"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := runHelm(t, bin, append([]string{"template", release, chartDir}, c.set...)...)
			if err == nil {
				t.Fatalf("helm template accepted %v:\n%s", c.set, out)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error does not name %q: %v", c.want, err)
			}
		})
	}
}

// TestSchemaIsStrictAndSelfContained walks values.schema.json: every object
// schema must close its properties (additionalProperties false, or a schema for
// string maps such as labels), and every $ref must be local.
func TestSchemaIsStrictAndSelfContained(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&root); err != nil {
		t.Fatalf("values.schema.json: %v", err)
	}
	var walk func(path string, node any)
	walk = func(path string, node any) {
		switch n := node.(type) {
		case map[string]any:
			if ref, ok := n["$ref"].(string); ok && !strings.HasPrefix(ref, "#") {
				t.Errorf("%s: $ref %q is not local (helm validates offline)", path, ref)
			}
			if id, ok := n["$id"].(string); ok && strings.Contains(id, "://") {
				t.Errorf("%s: $id %q points outside the file", path, id)
			}
			_, hasProps := n["properties"]
			if n["type"] == "object" || hasProps {
				ap, ok := n["additionalProperties"]
				switch {
				case path == "/properties/global":
					// Helm's globals, passed down by an umbrella chart: free-form by design.
				case !ok:
					t.Errorf("%s: object schema without additionalProperties", path)
				case ap == true:
					t.Errorf("%s: additionalProperties is true", path)
				case hasProps && ap != false:
					t.Errorf("%s: object with properties must set additionalProperties: false", path)
				}
			}
			keys := make([]string, 0, len(n))
			for k := range n {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(path+"/"+k, n[k])
			}
		case []any:
			for i, e := range n {
				walk(path+"/"+strconv.Itoa(i), e)
			}
		}
	}
	walk("", root)
}

// object is one rendered document, decoded.
type object struct {
	source string // helm's "# Source:" comment
	gvk    schema.GroupVersionKind
	obj    any
}

func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme,
		networkingv1.AddToScheme, rbacv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// Prometheus Operator objects, as far as the chart uses them. Decoded strictly:
// a field the chart renders that is not here is a typo or needs adding here.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			HonorLabels   bool   `json:"honorLabels,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleFile `json:"spec"`
}

// ruleFile is both a PrometheusRule's spec and a Prometheus rules file.
type ruleFile struct {
	Groups []struct {
		Name                    string            `json:"name"`
		Interval                string            `json:"interval,omitempty"`
		Limit                   *int              `json:"limit,omitempty"`
		QueryOffset             string            `json:"query_offset,omitempty"`
		PartialResponseStrategy string            `json:"partial_response_strategy,omitempty"`
		Labels                  map[string]string `json:"labels,omitempty"`
		Rules                   []struct {
			Record        string             `json:"record,omitempty"`
			Alert         string             `json:"alert,omitempty"`
			Expr          intstr.IntOrString `json:"expr"`
			For           string             `json:"for,omitempty"`
			KeepFiringFor string             `json:"keep_firing_for,omitempty"`
			Labels        map[string]string  `json:"labels,omitempty"`
			Annotations   map[string]string  `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

// monitoringAPIs make helm template render as on a cluster with the Prometheus
// Operator's CRDs (the chart renders ServiceMonitor and PrometheusRule only there).
var monitoringAPIs = []string{"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// render runs helm template and decodes every document strictly.
func render(t *testing.T, bin string, extra ...string) []object {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, monitoringAPIs...)
	out, err := runHelm(t, bin, append(args, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	sch := newScheme(t)
	var objs []object
	for _, doc := range docSeparator.Split(out, -1) {
		source := ""
		if m := regexp.MustCompile(`(?m)^# Source: (.*)$`).FindStringSubmatch(doc); m != nil {
			source = m[1]
		}
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s: not YAML: %v\n%s", source, err, doc)
		}
		gvk := schema.FromAPIVersionAndKind(tm.APIVersion, tm.Kind)
		if tm.APIVersion == "" || tm.Kind == "" {
			t.Fatalf("%s: missing apiVersion or kind:\n%s", source, doc)
		}
		var into any
		switch gvk {
		case schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}:
			into = &serviceMonitor{}
		case schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"}:
			into = &prometheusRule{}
		default:
			o, err := sch.New(gvk)
			if err != nil {
				t.Fatalf("%s: %s is not a known Kubernetes %s type (removed or misspelt apiVersion?): %v", source, tm.Kind, tm.APIVersion, err)
			}
			into = o
		}
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatalf("%s: %s does not decode strictly into %T: %v", source, gvk, into, err)
		}
		objs = append(objs, object{source: source, gvk: gvk, obj: into})
	}
	if len(objs) == 0 {
		t.Fatal("helm template rendered nothing")
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

func all[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func meta(o object) metav1.Object {
	if m, ok := o.obj.(metav1.Object); ok {
		return m
	}
	return nil
}

// podTemplate is a pod spec with the object it belongs to.
type podTemplate struct {
	owner  string
	labels map[string]string
	spec   corev1.PodSpec
}

func podTemplates(objs []object) []podTemplate {
	var pts []podTemplate
	for _, d := range all[*appsv1.Deployment](objs) {
		pts = append(pts, podTemplate{"Deployment/" + d.Name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	for _, j := range all[*batchv1.Job](objs) {
		pts = append(pts, podTemplate{"Job/" + j.Name, j.Spec.Template.Labels, j.Spec.Template.Spec})
	}
	return pts
}

func TestRenderedObjects(t *testing.T) {
	bin := helmBin(t)
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			objs := render(t, bin, vs.args()...)
			extraEnv := extraEnvNames(t, vs.file)
			checkRequiredFields(t, objs)
			checkNoSecretsRendered(t, objs)
			for _, pt := range podTemplates(objs) {
				checkRestricted(t, pt)
				checkEnv(t, pt, extraEnv)
			}
			checkDeployments(t, objs, vs)
			checkPDBs(t, objs)
			checkMigrationHook(t, objs)
			checkServices(t, objs)
			checkNetworkPolicy(t, objs)
			checkServiceMonitors(t, objs)
		})
	}
}

func extraEnvNames(t *testing.T, file string) []string {
	t.Helper()
	if file == "" {
		return nil
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		ExtraEnv []struct {
			Name string `json:"name"`
		} `json:"extraEnv"`
	}
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var names []string
	for _, e := range v.ExtraEnv {
		names = append(names, e.Name)
	}
	return names
}

// checkRequiredFields asserts what strict decoding cannot: fields the API server requires.
func checkRequiredFields(t *testing.T, objs []object) {
	t.Helper()
	for _, o := range objs {
		m := meta(o)
		if m == nil {
			continue
		}
		if m.GetName() == "" {
			t.Errorf("%s: %s without metadata.name", o.source, o.gvk.Kind)
		}
		if len(m.GetName()) > 63 && o.gvk.Kind != "ConfigMap" {
			t.Errorf("%s: name %q longer than 63", o.source, m.GetName())
		}
		if m.GetLabels()["app.kubernetes.io/instance"] != release {
			t.Errorf("%s: %s %s lacks the app.kubernetes.io/instance label", o.source, o.gvk.Kind, m.GetName())
		}
	}
	for _, pt := range podTemplates(objs) {
		if len(pt.spec.Containers) == 0 {
			t.Errorf("%s: no containers", pt.owner)
		}
		for _, c := range pt.spec.Containers {
			if c.Name == "" || c.Image == "" {
				t.Errorf("%s: container without name or image: %+v", pt.owner, c)
			}
		}
	}
	for _, d := range all[*appsv1.Deployment](objs) {
		if d.Spec.Selector == nil || len(d.Spec.Selector.MatchLabels) == 0 {
			t.Errorf("Deployment/%s: no selector", d.Name)
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			t.Errorf("Deployment/%s: selector: %v", d.Name, err)
		} else if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment/%s: selector %v does not match the pod labels %v", d.Name, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
		}
	}
}

// checkNoSecretsRendered: the chart renders no Secret and no secret material;
// every secret is referenced by name (existingSecret) only.
func checkNoSecretsRendered(t *testing.T, objs []object) {
	t.Helper()
	for _, s := range all[*corev1.Secret](objs) {
		t.Errorf("the chart renders Secret %s: secrets must come from existingSecret references", s.Name)
	}
	for _, cm := range all[*corev1.ConfigMap](objs) {
		for k := range cm.Data {
			if !strings.HasSuffix(k, ".json") {
				t.Errorf("ConfigMap/%s has key %q: only dashboards belong in ConfigMaps (configuration is env, secrets are Secrets)", cm.Name, k)
			}
		}
		if len(cm.BinaryData) > 0 {
			t.Errorf("ConfigMap/%s has binaryData", cm.Name)
		}
	}
	for _, pt := range podTemplates(objs) {
		for _, c := range pt.spec.Containers {
			for _, e := range c.Env {
				if slices.Contains(secretEnv, e.Name) {
					if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name == "" {
						t.Errorf("%s: %s must come from a secretKeyRef, got %+v", pt.owner, e.Name, e)
					}
				}
				if strings.Contains(e.Value, "://") && strings.Contains(e.Value, "@") {
					t.Errorf("%s: %s looks like a URL with credentials", pt.owner, e.Name)
				}
			}
		}
		for _, v := range pt.spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "" {
				t.Errorf("%s: secret volume %s without a secretName", pt.owner, v.Name)
			}
		}
	}
}

// checkRestricted asserts the `restricted` Pod Security Standard (and a
// read-only root filesystem) for a pod and each of its containers.
func checkRestricted(t *testing.T, pt podTemplate) {
	t.Helper()
	spec := pt.spec
	if spec.HostNetwork || spec.HostPID || spec.HostIPC || (spec.HostUsers != nil && *spec.HostUsers) {
		t.Errorf("%s: uses host namespaces", pt.owner)
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	for _, v := range spec.Volumes {
		vs := v.VolumeSource
		ok := vs.ConfigMap != nil || vs.CSI != nil || vs.DownwardAPI != nil || vs.EmptyDir != nil ||
			vs.Ephemeral != nil || vs.PersistentVolumeClaim != nil || vs.Projected != nil || vs.Secret != nil
		if !ok {
			t.Errorf("%s: volume %s has a type the restricted profile forbids", pt.owner, v.Name)
		}
	}
	containers := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	for _, c := range containers {
		where := pt.owner + " container " + c.Name
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: no securityContext", where)
			continue
		}
		nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
		if !nonRoot {
			t.Errorf("%s: runAsNonRoot is not true", where)
		}
		uid := sc.RunAsUser
		if uid == nil {
			uid = psc.RunAsUser
		}
		if uid != nil && *uid == 0 {
			t.Errorf("%s: runs as uid 0", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation must be false", where)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: readOnlyRootFilesystem must be true", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: capabilities must drop ALL", where)
		} else if len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: adds capabilities %v", where, sc.Capabilities.Add)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccompProfile must be RuntimeDefault, got %+v", where, seccomp)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				t.Errorf("%s: hostPort %d", where, p.HostPort)
			}
		}
	}
}

func checkEnv(t *testing.T, pt podTemplate, extra []string) {
	t.Helper()
	for _, c := range pt.spec.Containers {
		seen := map[string]bool{}
		for _, e := range c.Env {
			if !slices.Contains(contractEnv, e.Name) && !slices.Contains(extra, e.Name) {
				t.Errorf("%s: env %s is not in the configuration contract", pt.owner, e.Name)
			}
			if seen[e.Name] {
				t.Errorf("%s: env %s set twice", pt.owner, e.Name)
			}
			seen[e.Name] = true
		}
		if v := envValue(c, "AGENTRUNNER_LOG_FORMAT"); v != "json" {
			t.Errorf("%s: AGENTRUNNER_LOG_FORMAT=%q, want json", pt.owner, v)
		}
		if envVar(c, "DATABASE_URL") == nil {
			t.Errorf("%s: no DATABASE_URL", pt.owner)
		}
		// Every …_FILE and TLS path points into a mounted volume.
		for _, e := range c.Env {
			if !strings.HasPrefix(e.Value, "/") {
				continue
			}
			mounted := false
			for _, m := range c.VolumeMounts {
				if strings.HasPrefix(e.Value, strings.TrimSuffix(m.MountPath, "/")+"/") {
					mounted = true
				}
			}
			if !mounted {
				t.Errorf("%s: %s=%s is not under any volume mount", pt.owner, e.Name, e.Value)
			}
		}
	}
}

func envVar(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func envValue(c corev1.Container, name string) string {
	if e := envVar(c, name); e != nil {
		return e.Value
	}
	return ""
}

func component(l map[string]string) string { return l["app.kubernetes.io/component"] }

func checkDeployments(t *testing.T, objs []object, vs valueSet) {
	t.Helper()
	deps := all[*appsv1.Deployment](objs)
	byComponent := map[string]*appsv1.Deployment{}
	for _, d := range deps {
		byComponent[component(d.Spec.Template.Labels)] = d
	}
	runner := byComponent["runner"]
	if runner == nil {
		t.Fatalf("no runner Deployment (component=runner)")
	}
	worker := byComponent["worker"]
	if vs.name == "separate-workers" && worker == nil {
		t.Errorf("separate-workers: no worker Deployment")
	}
	for _, d := range deps {
		where := "Deployment/" + d.Name
		spec := d.Spec.Template.Spec
		if len(spec.Containers) != 1 {
			t.Errorf("%s: want 1 container, got %d", where, len(spec.Containers))
			continue
		}
		c := spec.Containers[0]
		wantArgs := []string{"serve"}
		if d == worker {
			wantArgs = []string{"worker"}
		}
		if !slices.Equal(c.Args, wantArgs) || len(c.Command) != 0 {
			t.Errorf("%s: command %v args %v, want the image's entrypoint with args %v", where, c.Command, c.Args, wantArgs)
		}
		workerOff := envValue(c, "AGENTRUNNER_WORKER") == "false"
		if d == runner && workerOff != (worker != nil) {
			t.Errorf("%s: AGENTRUNNER_WORKER=false is %v, but a worker Deployment exists is %v", where, workerOff, worker != nil)
		}
		// Drain must fit in the grace period.
		drainStr := envValue(c, "AGENTRUNNER_DRAIN_TIMEOUT")
		drain, err := time.ParseDuration(drainStr)
		if err != nil {
			t.Errorf("%s: AGENTRUNNER_DRAIN_TIMEOUT=%q: %v", where, drainStr, err)
		}
		if spec.TerminationGracePeriodSeconds == nil {
			t.Errorf("%s: no terminationGracePeriodSeconds", where)
		} else if grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
			t.Errorf("%s: terminationGracePeriodSeconds %v is not longer than the drain timeout %v", where, grace, drain)
		}
		if _, err := time.ParseDuration(envValue(c, "AGENTRUNNER_LEASE_TTL")); err != nil {
			t.Errorf("%s: AGENTRUNNER_LEASE_TTL: %v", where, err)
		}
		// Probes.
		ports := map[string]int32{}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
		metricsAddr := envValue(c, "AGENTRUNNER_METRICS_ADDR")
		if want := fmt.Sprintf(":%d", ports["metrics"]); metricsAddr != want {
			t.Errorf("%s: AGENTRUNNER_METRICS_ADDR=%q but the metrics port is %d", where, metricsAddr, ports["metrics"])
		}
		if d == runner {
			if want := fmt.Sprintf(":%d", ports["admin"]); envValue(c, "AGENTRUNNER_ADMIN_ADDR") != want || ports["admin"] == 0 {
				t.Errorf("%s: AGENTRUNNER_ADMIN_ADDR=%q, admin port %d", where, envValue(c, "AGENTRUNNER_ADMIN_ADDR"), ports["admin"])
			}
		}
		checkProbe(t, where+" liveness", c.LivenessProbe, "/healthz", ports)
		checkProbe(t, where+" readiness", c.ReadinessProbe, "/readyz", ports)
		if c.StartupProbe != nil {
			checkProbe(t, where+" startup", c.StartupProbe, "/healthz", ports)
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: memory request and limit must be set", where)
		}
		// Spread over nodes and zones.
		keys := map[string]bool{}
		for _, tsc := range spec.TopologySpreadConstraints {
			keys[tsc.TopologyKey] = true
			sel, err := metav1.LabelSelectorAsSelector(tsc.LabelSelector)
			if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("%s: topology spread selector does not select its own pods", where)
			}
		}
		if !keys["kubernetes.io/hostname"] || !keys["topology.kubernetes.io/zone"] {
			t.Errorf("%s: topology spread over hostname and zone missing: %v", where, keys)
		}
		if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
			t.Errorf("%s: strategy %s, want RollingUpdate", where, d.Spec.Strategy.Type)
		}
		if c.Image != runner.Spec.Template.Spec.Containers[0].Image {
			t.Errorf("%s: image %s differs from the runner's", where, c.Image)
		}
		// Only Vault's Kubernetes auth may see a ServiceAccount token.
		k8sAuth := envValue(c, "AGENTRUNNER_VAULT_AUTH") == "kubernetes"
		automount := spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken
		projected := false
		for _, v := range spec.Volumes {
			if v.Projected != nil {
				for _, s := range v.Projected.Sources {
					if s.ServiceAccountToken != nil {
						projected = true
						if s.ServiceAccountToken.Audience == "" {
							t.Errorf("%s: projected token without an audience", where)
						}
					}
				}
			}
		}
		if !k8sAuth && (automount || projected) {
			t.Errorf("%s: mounts a ServiceAccount token without Vault Kubernetes auth", where)
		}
		if k8sAuth && !automount && !projected {
			t.Errorf("%s: Vault Kubernetes auth but no ServiceAccount token", where)
		}
		if sa := spec.ServiceAccountName; sa == "" {
			t.Errorf("%s: no serviceAccountName", where)
		}
	}
}

func checkProbe(t *testing.T, where string, p *corev1.Probe, path string, ports map[string]int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s: want an httpGet probe on %s", where, path)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("%s: path %s, want %s", where, p.HTTPGet.Path, path)
	}
	port := p.HTTPGet.Port
	if (port.Type == intstr.String && port.StrVal != "metrics") || (port.Type == intstr.Int && port.IntVal != ports["metrics"]) {
		t.Errorf("%s: port %s, want the metrics port", where, port.String())
	}
}

func checkPDBs(t *testing.T, objs []object) {
	t.Helper()
	pdbs := all[*policyv1.PodDisruptionBudget](objs)
	for _, d := range all[*appsv1.Deployment](objs) {
		var found *policyv1.PodDisruptionBudget
		for _, p := range pdbs {
			sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
			if err == nil && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				if found != nil {
					t.Errorf("Deployment/%s is covered by two PDBs", d.Name)
				}
				found = p
			}
		}
		if found == nil {
			t.Errorf("Deployment/%s has no PodDisruptionBudget", d.Name)
			continue
		}
		if found.Spec.MaxUnavailable == nil || *found.Spec.MaxUnavailable != intstr.FromInt32(1) {
			t.Errorf("PDB/%s: maxUnavailable %v, want 1", found.Name, found.Spec.MaxUnavailable)
		}
		if found.Spec.MinAvailable != nil {
			t.Errorf("PDB/%s sets minAvailable too", found.Name)
		}
	}
}

func hookWeight(t *testing.T, m metav1.Object) int {
	t.Helper()
	w := m.GetAnnotations()["helm.sh/hook-weight"]
	if w == "" {
		return 0
	}
	n, err := strconv.Atoi(w)
	if err != nil {
		t.Errorf("%s: hook-weight %q: %v", m.GetName(), w, err)
	}
	return n
}

func checkMigrationHook(t *testing.T, objs []object) {
	t.Helper()
	jobs := all[*batchv1.Job](objs)
	if len(jobs) != 1 {
		t.Fatalf("want exactly 1 Job (migrations), got %d", len(jobs))
	}
	j := jobs[0]
	hooks := strings.Split(j.Annotations["helm.sh/hook"], ",")
	if !slices.Contains(hooks, "pre-install") || !slices.Contains(hooks, "pre-upgrade") {
		t.Errorf("Job/%s: helm.sh/hook=%q, want pre-install,pre-upgrade", j.Name, j.Annotations["helm.sh/hook"])
	}
	if !strings.Contains(j.Annotations["helm.sh/hook-delete-policy"], "before-hook-creation") {
		t.Errorf("Job/%s: hook-delete-policy must include before-hook-creation (or the next upgrade fails on the old Job)", j.Name)
	}
	spec := j.Spec.Template.Spec
	if len(spec.Containers) != 1 || !slices.Equal(spec.Containers[0].Args, []string{"migrate", "up"}) {
		t.Errorf("Job/%s: want one container with args [migrate up]", j.Name)
	}
	if spec.RestartPolicy != corev1.RestartPolicyNever && spec.RestartPolicy != corev1.RestartPolicyOnFailure {
		t.Errorf("Job/%s: restartPolicy %q", j.Name, spec.RestartPolicy)
	}
	if j.Spec.ActiveDeadlineSeconds == nil || j.Spec.BackoffLimit == nil {
		t.Errorf("Job/%s: activeDeadlineSeconds and backoffLimit must be set (a stuck migration must not block helm forever)", j.Name)
	}
	// On install the hook runs before the release's own objects exist, so its
	// ServiceAccount must be a hook of the same events with a lower weight.
	var sa *corev1.ServiceAccount
	for _, s := range all[*corev1.ServiceAccount](objs) {
		if s.Name == spec.ServiceAccountName {
			sa = s
		}
	}
	switch {
	case spec.ServiceAccountName == "" || spec.ServiceAccountName == "default":
	case sa == nil:
		t.Errorf("Job/%s: ServiceAccount %s is not rendered", j.Name, spec.ServiceAccountName)
	case !strings.Contains(sa.Annotations["helm.sh/hook"], "pre-install") || hookWeight(t, sa) >= hookWeight(t, j):
		t.Errorf("Job/%s: ServiceAccount %s is not created as an earlier pre-install hook", j.Name, sa.Name)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("Job/%s: the migration needs no ServiceAccount token", j.Name)
	}
}

func checkServices(t *testing.T, objs []object) {
	t.Helper()
	deps := all[*appsv1.Deployment](objs)
	for _, s := range all[*corev1.Service](objs) {
		var target *appsv1.Deployment
		for _, d := range deps {
			if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				target = d
			}
		}
		if target == nil || len(s.Spec.Selector) == 0 {
			t.Errorf("Service/%s selects no Deployment's pods", s.Name)
			continue
		}
		c := target.Spec.Template.Spec.Containers[0]
		for _, p := range s.Spec.Ports {
			found := false
			for _, cp := range c.Ports {
				if (p.TargetPort.Type == intstr.String && cp.Name == p.TargetPort.StrVal) || (p.TargetPort.Type == intstr.Int && cp.ContainerPort == p.TargetPort.IntVal) {
					found = true
				}
			}
			if !found {
				t.Errorf("Service/%s port %s: target %s is not a port of Deployment/%s", s.Name, p.Name, p.TargetPort.String(), target.Name)
			}
		}
	}
	if len(all[*corev1.Service](objs)) == 0 {
		t.Error("no Service")
	}
}

func checkNetworkPolicy(t *testing.T, objs []object) {
	t.Helper()
	for _, np := range all[*networkingv1.NetworkPolicy](objs) {
		where := "NetworkPolicy/" + np.Name
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			t.Errorf("%s: policyTypes %v, want Ingress and Egress", where, np.Spec.PolicyTypes)
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		for _, pt := range podTemplates(objs) {
			if !sel.Matches(labels.Set(pt.labels)) {
				t.Errorf("%s does not cover %s", where, pt.owner)
			}
		}
		dns := false
		for _, r := range np.Spec.Egress {
			if len(r.Ports) == 0 {
				t.Errorf("%s: an egress rule without ports allows everything", where)
			}
			for _, p := range r.Ports {
				if p.Port != nil && p.Port.IntValue() == 53 && p.Protocol != nil && *p.Protocol == corev1.ProtocolUDP {
					dns = true
				}
			}
		}
		if !dns {
			t.Errorf("%s: no DNS egress", where)
		}
		for _, r := range np.Spec.Ingress {
			if len(r.From) == 0 || len(r.Ports) == 0 {
				t.Errorf("%s: an ingress rule without sources or ports allows everyone", where)
			}
		}
	}
}

func checkServiceMonitors(t *testing.T, objs []object) {
	t.Helper()
	svcs := all[*corev1.Service](objs)
	for _, sm := range all[*serviceMonitor](objs) {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || len(sm.Spec.Selector.MatchLabels) == 0 {
			t.Errorf("ServiceMonitor/%s: bad selector: %v", sm.Name, err)
			continue
		}
		if len(sm.Spec.Endpoints) == 0 {
			t.Errorf("ServiceMonitor/%s: no endpoints", sm.Name)
		}
		matched := 0
		for _, s := range svcs {
			if !sel.Matches(labels.Set(s.Labels)) {
				continue
			}
			matched++
			for _, ep := range sm.Spec.Endpoints {
				if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
					t.Errorf("ServiceMonitor/%s: Service/%s has no port %q", sm.Name, s.Name, ep.Port)
				}
			}
		}
		if matched == 0 {
			t.Errorf("ServiceMonitor/%s selects no Service", sm.Name)
		}
	}
}

// TestSeparateWorkersIsComplete checks the worker Deployment gets everything a
// worker needs (the same Temporal, Vault and Buko settings as the runner).
func TestSeparateWorkersIsComplete(t *testing.T) {
	bin := helmBin(t)
	objs := render(t, bin, "-f", filepath.Join(chartDir, "ci", "separate-workers-values.yaml"))
	var runner, worker *corev1.Container
	for _, d := range all[*appsv1.Deployment](objs) {
		c := d.Spec.Template.Spec.Containers[0]
		switch component(d.Spec.Template.Labels) {
		case "runner":
			runner = &c
		case "worker":
			worker = &c
		}
	}
	if runner == nil || worker == nil {
		t.Fatal("want a runner and a worker Deployment")
	}
	for _, e := range runner.Env {
		if e.Name == "AGENTRUNNER_WORKER" {
			continue
		}
		w := envVar(*worker, e.Name)
		if w == nil {
			t.Errorf("worker lacks %s", e.Name)
			continue
		}
		if w.Value != e.Value {
			t.Errorf("worker %s=%q, runner %q", e.Name, w.Value, e.Value)
		}
	}
	if envVar(*worker, "AGENTRUNNER_WORKER") != nil {
		t.Error("the worker Deployment must not set AGENTRUNNER_WORKER")
	}
}

// TestPrometheusRuleMatchesDeployAndPassesPromtool renders the PrometheusRules,
// checks each spec equals its rules file (deploy/prometheus's when it exists,
// else the chart's copy), and runs `promtool check rules` on it.
func TestPrometheusRuleMatchesDeployAndPassesPromtool(t *testing.T) {
	bin := helmBin(t)
	promtool := deploy.RequirePromtool(t)
	objs := render(t, bin, "--set", "metrics.prometheusRule.enabled=true")
	rules := all[*prometheusRule](objs)
	chartFiles := chartCopies(t, "prometheus")
	if len(rules) != len(chartFiles) || len(rules) == 0 {
		t.Fatalf("rendered %d PrometheusRules for %d rules files in the chart", len(rules), len(chartFiles))
	}
	root := repoRoot(t)
	for _, pr := range rules {
		src := pr.Annotations["agentrunner.buko.app/source"]
		if src == "" {
			t.Fatalf("PrometheusRule/%s has no source annotation", pr.Name)
		}
		want := filepath.Join(chartDir, "files", "prometheus", src)
		if up := filepath.Join(root, "deploy", "prometheus", src); fileExists(up) {
			want = up
		}
		// Both sides through the same strict struct, so neither can carry a field the other lacks.
		raw, err := os.ReadFile(want)
		if err != nil {
			t.Fatal(err)
		}
		var wantRF ruleFile
		if err := yaml.UnmarshalStrict(raw, &wantRF); err != nil {
			t.Fatalf("%s: %v", want, err)
		}
		gotJSON, err := json.Marshal(pr.Spec)
		if err != nil {
			t.Fatal(err)
		}
		wantJSON, err := json.Marshal(wantRF)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(gotJSON, wantJSON) {
			t.Errorf("PrometheusRule/%s differs from %s:\n got %s\nwant %s", pr.Name, want, gotJSON, wantJSON)
		}
		// The spec, as rendered, through promtool.
		specYAML, err := yaml.Marshal(pr.Spec)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), src)
		if err := os.WriteFile(f, specYAML, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, promtool, "check", "rules", f).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool check rules on PrometheusRule/%s: %v\n%s", pr.Name, err, out)
		} else {
			t.Logf("promtool: %s", strings.TrimSpace(string(out)))
		}
	}
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// chartCopies lists the chart's copies of kind (prometheus or grafana).
func chartCopies(t *testing.T, kind string) []string {
	t.Helper()
	var pats []string
	switch kind {
	case "prometheus":
		pats = []string{"*.yaml", "*.yml"}
	case "grafana":
		pats = []string{"*.json"}
	}
	var files []string
	for _, p := range pats {
		m, err := filepath.Glob(filepath.Join(chartDir, "files", kind, p))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	sort.Strings(files)
	return files
}

// deploySources lists what deploy/<kind> ships into the chart, the same
// selection as deploy/dev/sync-chart-files.sh makes.
func deploySources(t *testing.T, kind string) []string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "deploy", kind)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		switch kind {
		case "prometheus":
			if ext := filepath.Ext(p); ext != ".yaml" && ext != ".yml" {
				continue
			}
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`(?m)^groups:`).Match(raw) {
				continue // e.g. a promtool unit-test file
			}
		case "grafana":
			if filepath.Ext(p) != ".json" {
				continue
			}
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// TestChartCopiesMatchDeploy: the chart's rules and dashboards are byte-for-byte
// copies of deploy/prometheus and deploy/grafana (once those exist).
func TestChartCopiesMatchDeploy(t *testing.T) {
	for _, kind := range []string{"prometheus", "grafana"} {
		t.Run(kind, func(t *testing.T) {
			src := deploySources(t, kind)
			copies := chartCopies(t, kind)
			if len(copies) == 0 {
				t.Fatalf("the chart has no files/%s", kind)
			}
			if len(src) == 0 {
				t.Skipf("deploy/%s has no files yet: the chart ships its placeholder (%d files)", kind, len(copies))
			}
			var srcNames, copyNames []string
			for _, s := range src {
				srcNames = append(srcNames, filepath.Base(s))
			}
			for _, c := range copies {
				copyNames = append(copyNames, filepath.Base(c))
			}
			if !slices.Equal(srcNames, copyNames) {
				t.Fatalf("deploy/%s has %v but the chart has %v: run deploy/dev/sync-chart-files.sh", kind, srcNames, copyNames)
			}
			for i := range src {
				a, err := os.ReadFile(src[i])
				if err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(copies[i])
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(a, b) {
					t.Errorf("%s differs from %s: run deploy/dev/sync-chart-files.sh", copies[i], src[i])
				}
			}
		})
	}
}

func TestDashboardConfigMap(t *testing.T) {
	bin := helmBin(t)
	objs := render(t, bin, "--set", "metrics.dashboard.enabled=true")
	cms := all[*corev1.ConfigMap](objs)
	if len(cms) != 1 {
		t.Fatalf("want 1 dashboard ConfigMap, got %d", len(cms))
	}
	cm := cms[0]
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap/%s lacks the sidecar label grafana_dashboard=1: %v", cm.Name, cm.Labels)
	}
	files := chartCopies(t, "grafana")
	if len(cm.Data) != len(files) {
		t.Errorf("ConfigMap has %d dashboards, the chart %d files", len(cm.Data), len(files))
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var dash struct {
			Title  string `json:"title"`
			UID    string `json:"uid"`
			Panels []any  `json:"panels"`
		}
		if err := json.Unmarshal(raw, &dash); err != nil || dash.Title == "" || dash.UID == "" {
			t.Errorf("%s: not a dashboard with a title and uid (%v)", f, err)
		}
		got, ok := cm.Data[filepath.Base(f)]
		if !ok {
			t.Errorf("ConfigMap lacks %s", filepath.Base(f))
			continue
		}
		if strings.TrimRight(got, "\n") != strings.TrimRight(string(raw), "\n") {
			t.Errorf("ConfigMap's %s differs from %s", filepath.Base(f), f)
		}
	}
}

// TestDocsListEveryVariable keeps docs/deploy.md's configuration table in step
// with what the chart sets.
func TestDocsListEveryVariable(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range contractEnv {
		if !strings.Contains(string(raw), "`"+name+"`") {
			t.Errorf("docs/deploy.md does not document `%s`", name)
		}
	}
}

// TestNotesTellHowToAddTheFirstBot renders NOTES.txt (helm template skips it)
// by wrapping it in a ConfigMap in a copy of the chart.
func TestNotesTellHowToAddTheFirstBot(t *testing.T) {
	bin := helmBin(t)
	notes, err := os.ReadFile(filepath.Join(chartDir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "agentrunner")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	wrapper := "{{- define \"test.notes\" }}" + string(notes) + "{{- end }}\n" +
		"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"test.notes\" . | quote }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "zz-notes-test.yaml"), []byte(wrapper), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			args := []string{"template", "agentrunner", dir, "-n", namespace, "--show-only", "templates/zz-notes-test.yaml"}
			if vs.file != "" {
				abs, err := filepath.Abs(vs.file)
				if err != nil {
					t.Fatal(err)
				}
				args = append(args, "-f", abs)
			}
			out, err := runHelm(t, bin, args...)
			if err != nil {
				t.Fatal(err)
			}
			var cm corev1.ConfigMap
			if err := yaml.UnmarshalStrict([]byte(strings.TrimPrefix(strings.TrimSpace(stripComments(out)), "---")), &cm); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			text := cm.Data["notes"]
			for _, want := range []string{
				"kubectl -n agentrunner exec -i deploy/agentrunner -c agentrunner --",
				"agentrunner bots add --handle",
				"< ./my_bot.token",
				"rollout status deploy/agentrunner",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("NOTES lack %q:\n%s", want, text)
				}
			}
			if vs.name == "minimal" && !strings.Contains(text, "WARNING: cipher=local") {
				t.Errorf("NOTES for cipher=local lack the warning:\n%s", text)
			}
			if vs.name == "separate-workers" && !strings.Contains(text, "deploy/agentrunner-worker") {
				t.Errorf("NOTES for separate workers lack the worker rollout:\n%s", text)
			}
		})
	}
}
