package helm

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"buko.app/agentrunner/internal/testsupport"
)

// The chart on a real API server: kube-apiserver and etcd started by
// deploy/dev/kube.sh. Objects are validated, admitted and stored there; no
// controller, scheduler or kubelet runs, so no pod starts and no Job
// completes. Helm waits for hook Jobs to complete, so every install, upgrade
// and rollback here runs with --no-hooks (and without --wait), and the test
// creates the release's hooks (`helm get hooks`) on the server itself, so the
// migration Job and its ServiceAccount are still validated and stored.

const kubeHint = "run `bash deploy/dev/kube.sh start` (make services does) and source services.env"

// kube is a minimal client for the test API server (from the kubeconfig kube.sh writes).
type kube struct {
	t      *testing.T
	server string
	token  string
	hc     *http.Client
	config string // the kubeconfig path, for helm
}

func newKube(t *testing.T) *kube {
	t.Helper()
	path := testsupport.Getenv(t, "kube-apiserver", "AGENTRUNNER_KUBECONFIG", kubeHint)
	raw, err := os.ReadFile(path)
	testsupport.Require(t, "kube-apiserver", err, kubeHint)
	var cfg struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
				CA     string `json:"certificate-authority"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			User struct {
				Token string `json:"token"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil || len(cfg.Clusters) != 1 || len(cfg.Users) != 1 {
		t.Fatalf("%s: not the kubeconfig kube.sh writes (%v)", path, err)
	}
	ca, err := os.ReadFile(cfg.Clusters[0].Cluster.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("%s: no certificate", cfg.Clusters[0].Cluster.CA)
	}
	k := &kube{t: t, server: cfg.Clusters[0].Cluster.Server, token: cfg.Users[0].User.Token, config: path,
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	if code, body := k.do("GET", "/readyz", "", nil); code != http.StatusOK {
		testsupport.Unavailable(t, "kube-apiserver", fmt.Sprintf("%s/readyz: %d %s", k.server, code, body), kubeHint)
	}
	return k
}

func (k *kube) do(method, path, contentType string, body []byte) (int, []byte) {
	k.t.Helper()
	// Not t.Context(): cleanups call this after it is cancelled; hc has a timeout.
	req, err := http.NewRequestWithContext(context.Background(), method, k.server+path, bytes.NewReader(body))
	if err != nil {
		k.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		k.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// get decodes the object at path into v; it reports whether it exists.
func (k *kube) get(path string, v any) bool {
	k.t.Helper()
	code, body := k.do("GET", path, "", nil)
	switch code {
	case http.StatusOK:
		if err := json.Unmarshal(body, v); err != nil {
			k.t.Fatalf("GET %s: %v", path, err)
		}
		return true
	case http.StatusNotFound:
		return false
	}
	k.t.Fatalf("GET %s: %d %s", path, code, body)
	return false
}

// create POSTs a YAML document to collection.
func (k *kube) create(collection string, doc []byte) {
	k.t.Helper()
	code, body := k.do("POST", collection, "application/yaml", doc)
	if code != http.StatusCreated && code != http.StatusOK {
		k.t.Fatalf("POST %s: %d %s\n%s", collection, code, body, doc)
	}
}

func (k *kube) createNamespace(name string) {
	k.t.Helper()
	var ns corev1.Namespace
	if k.get("/api/v1/namespaces/"+name, &ns) {
		return
	}
	k.create("/api/v1/namespaces", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: "+name+"}\n"))
}

func (k *kube) deleteNamespace(name string) {
	k.do("DELETE", "/api/v1/namespaces/"+name, "", nil)
}

// helm runs helm against the test API server.
func (k *kube) helm(bin string, args ...string) (string, error) {
	k.t.Helper()
	return runHelm(k.t, bin, append(args, "--kubeconfig", k.config)...)
}

// installCRDs installs the Prometheus Operator CRDs (testdata/crds) unless present.
func (k *kube) installCRDs() {
	k.t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "crds", "*.yaml"))
	if err != nil || len(files) != 2 {
		k.t.Fatalf("testdata/crds: %v %v", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			k.t.Fatal(err)
		}
		var meta struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			k.t.Fatal(err)
		}
		var crd map[string]any
		if !k.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"+meta.Metadata.Name, &crd) {
			k.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", raw)
		}
		testsupport.Within(k.t, "CRD "+meta.Metadata.Name+" established", time.Minute, func() bool {
			var c struct {
				Status struct {
					Conditions []struct{ Type, Status string } `json:"conditions"`
				} `json:"status"`
			}
			k.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"+meta.Metadata.Name, &c)
			for _, cond := range c.Status.Conditions {
				if cond.Type == "Established" && cond.Status == "True" {
					return true
				}
			}
			return false
		})
	}
	// Discovery (what helm's .Capabilities reads) serves the new group.
	testsupport.Within(k.t, "monitoring.coreos.com/v1 in discovery", time.Minute, func() bool {
		code, _ := k.do("GET", "/apis/monitoring.coreos.com/v1", "", nil)
		return code == http.StatusOK
	})
}

// deleteCRDs removes the Prometheus Operator CRDs and waits until discovery no
// longer serves their group.
func (k *kube) deleteCRDs() {
	k.t.Helper()
	for _, name := range []string{"servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"} {
		k.do("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"+name, "", nil)
	}
	testsupport.Within(k.t, "monitoring.coreos.com/v1 gone from discovery", 2*time.Minute, func() bool {
		code, _ := k.do("GET", "/apis/monitoring.coreos.com/v1", "", nil)
		return code == http.StatusNotFound
	})
}

// readValues reads the keys of a values file the test checks.
type installValues struct {
	Replicas      *int32 `json:"replicas"`
	NetworkPolicy struct {
		Enabled *bool `json:"enabled"`
	} `json:"networkPolicy"`
	Worker struct {
		Separate bool   `json:"separate"`
		Replicas *int32 `json:"replicas"`
	} `json:"worker"`
	Metrics struct {
		ServiceMonitor struct{ Enabled bool } `json:"serviceMonitor"`
		PrometheusRule struct{ Enabled bool } `json:"prometheusRule"`
		Dashboard      struct {
			Enabled   *bool  `json:"enabled"`
			Namespace string `json:"namespace"`
		} `json:"dashboard"`
	} `json:"metrics"`
}

func readInstallValues(t *testing.T, file string) installValues {
	t.Helper()
	var v installValues
	for _, f := range []string{filepath.Join(chartDir, "values.yaml"), file} {
		if f == "" {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return v
}

// TestChartWithoutMonitoringCRDs installs the production values (which ask for
// a ServiceMonitor and a PrometheusRule) on a server without the Prometheus
// Operator's CRDs (removed first if an earlier run left them): the release
// installs without those objects, and NOTES say so. Then the CRDs are
// installed and `helm upgrade` creates both.
func TestChartWithoutMonitoringCRDs(t *testing.T) {
	bin := helmBin(t)
	k := newKube(t)
	k.deleteCRDs()
	ns := "nocrds-" + testsupport.RandHex(3)
	k.createNamespace(ns)
	k.createNamespace(ns + "-grafana")
	t.Cleanup(func() {
		_, _ = k.helm(bin, "uninstall", "agentrunner", "-n", ns, "--no-hooks")
		k.deleteNamespace(ns)
		k.deleteNamespace(ns + "-grafana")
	})
	args := []string{chartDir, "-n", ns, "--no-hooks", "-f", filepath.Join(chartDir, "ci", "production-values.yaml"),
		"--set", "metrics.dashboard.namespace=" + ns + "-grafana"}
	out, err := k.helm(bin, append([]string{"install", "agentrunner"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		if !strings.Contains(out, "does not serve\nmonitoring.coreos.com/v1 "+kind) {
			t.Errorf("NOTES do not warn that %s was skipped:\n%s", kind, out)
		}
	}
	man, err := k.helm(bin, "get", "manifest", "agentrunner", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(man, "monitoring.coreos.com") {
		t.Errorf("the release carries monitoring.coreos.com objects on a cluster without the CRDs")
	}
	var d appsv1.Deployment
	if !k.get("/apis/apps/v1/namespaces/"+ns+"/deployments/agentrunner", &d) {
		t.Error("Deployment not stored")
	}

	k.installCRDs()
	out, err = k.helm(bin, append([]string{"upgrade", "agentrunner"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "WARNING: metrics.") {
		t.Errorf("NOTES still warn after the CRDs were installed:\n%s", out)
	}
	var obj map[string]any
	if !k.get("/apis/monitoring.coreos.com/v1/namespaces/"+ns+"/servicemonitors/agentrunner", &obj) {
		t.Error("helm upgrade after installing the CRDs stored no ServiceMonitor")
	}
	if !k.get("/apis/monitoring.coreos.com/v1/namespaces/"+ns+"/prometheusrules/agentrunner-agentrunner-rules", &obj) {
		t.Error("helm upgrade after installing the CRDs stored no PrometheusRule")
	}
}

// TestChartInstallsOnAPIServer installs every ci/ values file (and the
// defaults) into its own namespace, upgrades it with a changed replica count,
// rolls it back, and checks what the server stored after each step.
func TestChartInstallsOnAPIServer(t *testing.T) {
	bin := helmBin(t)
	k := newKube(t)
	k.installCRDs()
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			k := *k
			k.t = t
			ns := "install-" + vs.name + "-" + testsupport.RandHex(3)
			k.createNamespace(ns)
			v := readInstallValues(t, vs.file)
			rel := "agentrunner"
			common := append([]string{chartDir, "-n", ns, "--no-hooks", "--timeout", "2m"}, vs.args()...)
			if v.Metrics.Dashboard.Namespace != "" {
				// Grafana's namespace, which must exist beforehand: one per run,
				// so a release left by an earlier run cannot own the ConfigMap.
				v.Metrics.Dashboard.Namespace = ns + "-grafana"
				k.createNamespace(v.Metrics.Dashboard.Namespace)
				common = append(common, "--set", "metrics.dashboard.namespace="+v.Metrics.Dashboard.Namespace)
				t.Cleanup(func() { k.deleteNamespace(v.Metrics.Dashboard.Namespace) })
			}
			// No namespace controller runs, so deleting a namespace leaves its
			// objects: uninstall first.
			t.Cleanup(func() {
				_, _ = k.helm(bin, "uninstall", rel, "-n", ns, "--no-hooks")
				k.deleteNamespace(ns)
			})
			if out, err := k.helm(bin, append([]string{"install", rel}, common...)...); err != nil {
				t.Fatal(err)
			} else if strings.Contains(out, "WARNING: metrics.") {
				t.Errorf("NOTES warn of missing monitoring CRDs on a cluster that has them:\n%s", out)
			}
			base := *v.Replicas
			checkStored(&k, ns, rel, v, base)
			createHooks(&k, bin, ns, rel)

			// Upgrade with a changed value, then roll back to revision 1.
			if _, err := k.helm(bin, append([]string{"upgrade", rel}, append(common, "--set", fmt.Sprintf("replicas=%d", base+2))...)...); err != nil {
				t.Fatal(err)
			}
			checkStored(&k, ns, rel, v, base+2)
			if _, err := k.helm(bin, "rollback", rel, "1", "-n", ns, "--no-hooks", "--timeout", "2m"); err != nil {
				t.Fatal(err)
			}
			checkStored(&k, ns, rel, v, base)
			hist, err := k.helm(bin, "history", rel, "-n", ns, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			var revs []struct {
				Revision int    `json:"revision"`
				Status   string `json:"status"`
			}
			if err := json.Unmarshal([]byte(hist), &revs); err != nil {
				t.Fatal(err)
			}
			if len(revs) != 3 || revs[2].Revision != 3 || revs[2].Status != "deployed" {
				t.Errorf("helm history after install, upgrade, rollback: %s", hist)
			}
		})
	}
}

// checkStored reads back what the server stored for release rel in ns.
func checkStored(k *kube, ns, rel string, v installValues, replicas int32) {
	t := k.t
	t.Helper()
	var d appsv1.Deployment
	if !k.get("/apis/apps/v1/namespaces/"+ns+"/deployments/"+rel, &d) {
		t.Fatalf("Deployment %s/%s not stored", ns, rel)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		t.Errorf("Deployment replicas = %v, want %d", d.Spec.Replicas, replicas)
	}
	ps := d.Spec.Template.Spec
	if ps.SecurityContext == nil || ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot {
		t.Errorf("stored pod template is not runAsNonRoot: %+v", ps.SecurityContext)
	}
	if len(ps.Containers) == 0 || ps.Containers[0].ReadinessProbe == nil || ps.Containers[0].ReadinessProbe.HTTPGet == nil ||
		ps.Containers[0].ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("stored readiness probe is not /readyz")
	}
	if ps.ServiceAccountName != rel {
		t.Errorf("Deployment runs as ServiceAccount %q, want %q", ps.ServiceAccountName, rel)
	}
	if v.Worker.Separate {
		var w appsv1.Deployment
		if !k.get("/apis/apps/v1/namespaces/"+ns+"/deployments/"+rel+"-worker", &w) {
			t.Errorf("worker Deployment not stored")
		} else if w.Spec.Replicas == nil || *w.Spec.Replicas != *v.Worker.Replicas {
			t.Errorf("worker replicas = %v, want %d", w.Spec.Replicas, *v.Worker.Replicas)
		}
	}
	var pdb policyv1.PodDisruptionBudget
	if !k.get("/apis/policy/v1/namespaces/"+ns+"/poddisruptionbudgets/"+rel, &pdb) {
		t.Errorf("PodDisruptionBudget not stored")
	} else if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB maxUnavailable = %v, want 1", pdb.Spec.MaxUnavailable)
	}
	var np networkingv1.NetworkPolicy
	hasNP := k.get("/apis/networking.k8s.io/v1/namespaces/"+ns+"/networkpolicies/"+rel, &np)
	if wantNP := v.NetworkPolicy.Enabled == nil || *v.NetworkPolicy.Enabled; hasNP != wantNP {
		t.Errorf("NetworkPolicy stored = %v, want %v", hasNP, wantNP)
	} else if hasNP && (len(np.Spec.PolicyTypes) != 2 || len(np.Spec.Egress) == 0) {
		t.Errorf("stored NetworkPolicy has policy types %v and %d egress rules", np.Spec.PolicyTypes, len(np.Spec.Egress))
	}
	var sa corev1.ServiceAccount
	if !k.get("/api/v1/namespaces/"+ns+"/serviceaccounts/"+rel, &sa) {
		t.Errorf("ServiceAccount %s not stored", rel)
	} else if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount automounts its token")
	}
	// The chart grants its ServiceAccount no API rights: the pods never call the
	// Kubernetes API (Vault reviews their tokens). RBAC in the namespace is
	// only what the server itself made.
	for _, kind := range []string{"roles", "rolebindings"} {
		var list struct {
			Items []struct {
				Metadata struct{ Name string } `json:"metadata"`
			} `json:"items"`
		}
		k.get("/apis/rbac.authorization.k8s.io/v1/namespaces/"+ns+"/"+kind, &list)
		if len(list.Items) != 0 {
			t.Errorf("%s in %s: %v (the chart should grant none)", kind, ns, list.Items)
		}
	}
	var svc corev1.Service
	if !k.get("/api/v1/namespaces/"+ns+"/services/"+rel, &svc) {
		t.Errorf("Service not stored")
	} else if svc.Spec.ClusterIP == "" {
		t.Errorf("the server assigned the Service no cluster IP")
	}
	var any map[string]any
	if got := k.get("/apis/monitoring.coreos.com/v1/namespaces/"+ns+"/servicemonitors/"+rel, &any); got != v.Metrics.ServiceMonitor.Enabled {
		t.Errorf("ServiceMonitor stored = %v, want %v", got, v.Metrics.ServiceMonitor.Enabled)
	}
	if got := k.get("/apis/monitoring.coreos.com/v1/namespaces/"+ns+"/prometheusrules/"+rel+"-agentrunner-rules", &any); got != v.Metrics.PrometheusRule.Enabled {
		t.Errorf("PrometheusRule stored = %v, want %v", got, v.Metrics.PrometheusRule.Enabled)
	}
	if v.Metrics.Dashboard.Enabled == nil || *v.Metrics.Dashboard.Enabled {
		dns := v.Metrics.Dashboard.Namespace
		if dns == "" {
			dns = ns
		}
		var cm corev1.ConfigMap
		if !k.get("/api/v1/namespaces/"+dns+"/configmaps/"+rel+"-dashboards", &cm) {
			t.Errorf("dashboard ConfigMap not stored in %s", dns)
		} else if len(cm.Data) == 0 {
			t.Errorf("dashboard ConfigMap has no data")
		}
	}
}

// createHooks creates the release's hooks (`helm get hooks`) on the server, as
// helm would before an install, and checks the stored migration Job.
func createHooks(k *kube, bin, ns, rel string) {
	t := k.t
	t.Helper()
	out, err := k.helm(bin, "get", "hooks", rel, "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, doc := range docSeparator.Split(out, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatal(err)
		}
		kinds[tm.Kind]++
		switch tm.Kind {
		case "ServiceAccount":
			k.create("/api/v1/namespaces/"+ns+"/serviceaccounts", []byte(doc))
		case "Job":
			k.create("/apis/batch/v1/namespaces/"+ns+"/jobs", []byte(doc))
		default:
			t.Errorf("unexpected hook kind %q", tm.Kind)
		}
	}
	if kinds["Job"] != 1 || kinds["ServiceAccount"] != 1 {
		t.Fatalf("helm get hooks: %v, want one Job and one ServiceAccount", kinds)
	}
	var job batchv1.Job
	if !k.get("/apis/batch/v1/namespaces/"+ns+"/jobs/"+rel+"-migrate", &job) {
		t.Fatal("migration Job not stored")
	}
	c := job.Spec.Template.Spec.Containers
	if len(c) != 1 || strings.Join(c[0].Args, " ") != "migrate up" {
		t.Errorf("stored migration Job runs %v", c)
	}
	if job.Spec.Template.Spec.ServiceAccountName != rel+"-migrate" {
		t.Errorf("migration Job runs as %q", job.Spec.Template.Spec.ServiceAccountName)
	}
	if job.Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" {
		t.Errorf("stored Job's hook annotation %q", job.Annotations["helm.sh/hook"])
	}
	// The server filled in what only it fills in (defaulting ran): the Job's
	// selector and completion mode.
	if job.Spec.Selector == nil || job.Spec.CompletionMode == nil {
		t.Errorf("stored Job was not defaulted by the server: selector %v, completionMode %v", job.Spec.Selector, job.Spec.CompletionMode)
	}
}

// TestChartHookJobWaitsForAKubelet shows why the other tests use --no-hooks:
// with hooks, helm creates the migration hook's ServiceAccount and Job (the
// server stores them) and then waits for the Job to complete, which without a
// kubelet never happens, so the install times out and the release fails.
func TestChartHookJobWaitsForAKubelet(t *testing.T) {
	bin := helmBin(t)
	k := newKube(t)
	ns := "hooks-" + testsupport.RandHex(3)
	k.createNamespace(ns)
	t.Cleanup(func() {
		_, _ = k.helm(bin, "uninstall", "agentrunner", "-n", ns, "--no-hooks")
		k.do("DELETE", "/apis/batch/v1/namespaces/"+ns+"/jobs/agentrunner-migrate", "", nil)
		k.deleteNamespace(ns)
	})
	_, err := k.helm(bin, "install", "agentrunner", chartDir, "-n", ns, "--timeout", "5s",
		"-f", filepath.Join(chartDir, "ci", "minimal-values.yaml"))
	if err == nil {
		t.Fatal("helm install with hooks succeeded on a server without a kubelet: did the migration Job complete?")
	}
	if !strings.Contains(err.Error(), "pre-install") {
		t.Fatalf("helm install failed, but not in the pre-install hook: %v", err)
	}
	var job batchv1.Job
	if !k.get("/apis/batch/v1/namespaces/"+ns+"/jobs/agentrunner-migrate", &job) {
		t.Fatal("helm created no migration Job")
	}
	if job.Status.Succeeded != 0 || job.Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" {
		t.Errorf("stored hook Job: succeeded %d, hook %q", job.Status.Succeeded, job.Annotations["helm.sh/hook"])
	}
	// When a hook fails, helm deletes the hooks before it that succeeded and
	// carry hook-succeeded: the migration ServiceAccount goes, the failed Job
	// stays (docs/deploy.md: a Job still retrying then cannot create pods).
	var sa corev1.ServiceAccount
	if k.get("/api/v1/namespaces/"+ns+"/serviceaccounts/agentrunner-migrate", &sa) {
		t.Log("the hook ServiceAccount outlived the failed hook (helm no longer deletes it)")
	}
}
