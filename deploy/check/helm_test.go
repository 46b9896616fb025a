package check

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor
// the chart renders (the CRD's Go types are not worth their dependencies);
// decoded strictly like the rest, so a misspelt field fails.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// rendered is one `helm template` output, decoded.
type rendered struct {
	deployments  []*appsv1.Deployment
	daemonSets   []*appsv1.DaemonSet
	statefulSets []*appsv1.StatefulSet
	services     []*corev1.Service
	configMaps   []*corev1.ConfigMap
	secrets      []*corev1.Secret
	accounts     []*corev1.ServiceAccount
	ingresses    []*networkingv1.Ingress
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	pdbs         []*policyv1.PodDisruptionBudget
	monitors     []*serviceMonitor
}

// decode splits a multi-document manifest and decodes each document
// strictly (unknown or misspelt fields are errors) into its API type.
func decode(manifest []byte) (*rendered, error) {
	r := &rendered{}
	for i, doc := range bytes.Split(manifest, []byte("\n---")) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if tm.Kind == "" {
			if len(bytes.TrimSpace(stripComments(doc))) != 0 {
				return nil, fmt.Errorf("document %d has no kind:\n%s", i, doc)
			}
			continue
		}
		var obj any
		key := tm.APIVersion + " " + tm.Kind
		switch key {
		case "apps/v1 Deployment":
			o := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, o), o
		case "apps/v1 DaemonSet":
			o := &appsv1.DaemonSet{}
			r.daemonSets, obj = append(r.daemonSets, o), o
		case "apps/v1 StatefulSet":
			o := &appsv1.StatefulSet{}
			r.statefulSets, obj = append(r.statefulSets, o), o
		case "v1 Service":
			o := &corev1.Service{}
			r.services, obj = append(r.services, o), o
		case "v1 ConfigMap":
			o := &corev1.ConfigMap{}
			r.configMaps, obj = append(r.configMaps, o), o
		case "v1 Secret":
			o := &corev1.Secret{}
			r.secrets, obj = append(r.secrets, o), o
		case "v1 ServiceAccount":
			o := &corev1.ServiceAccount{}
			r.accounts, obj = append(r.accounts, o), o
		case "networking.k8s.io/v1 Ingress":
			o := &networkingv1.Ingress{}
			r.ingresses, obj = append(r.ingresses, o), o
		case "autoscaling/v2 HorizontalPodAutoscaler":
			o := &autoscalingv2.HorizontalPodAutoscaler{}
			r.hpas, obj = append(r.hpas, o), o
		case "policy/v1 PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			r.pdbs, obj = append(r.pdbs, o), o
		case "monitoring.coreos.com/v1 ServiceMonitor":
			o := &serviceMonitor{}
			r.monitors, obj = append(r.monitors, o), o
		default:
			return nil, fmt.Errorf("document %d: unexpected %s", i, key)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, key, err)
		}
	}
	return r, nil
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
			out = append(out, l...)
		}
	}
	return out
}

// helm runs the pinned helm binary.
func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(need(t, "HELM"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

type variant struct {
	values     string // file under ci/, "" for the defaults
	daemonSet  bool
	preStop    bool
	redis      bool // bundled Redis
	ingressHPA bool
	existing   []string // Secrets the operator made
}

var variants = []variant{
	{values: ""},
	{values: "header-values.yaml", redis: true, ingressHPA: true},
	{values: "existing-secrets-values.yaml", existing: []string{"ph-config", "ph-secrets"}},
	{values: "transparent-values.yaml", daemonSet: true},
	{values: "gateway-values.yaml", daemonSet: true, preStop: true},
}

// TestHelmChart lints and renders the chart for each values variant,
// decodes every manifest strictly into the Kubernetes API types, checks
// what the chart promises of each workload kind, and validates the
// rendered agent config with the agent itself.
func TestHelmChart(t *testing.T) {
	chart := filepath.Join(root(t), "deploy/helm/proxy-hopper")
	ciFiles, _ := filepath.Glob(filepath.Join(chart, "ci/*.yaml"))
	if len(ciFiles) != len(variants)-1 {
		t.Fatalf("ci/ has %d values files, the test knows %d: add them to variants", len(ciFiles), len(variants)-1)
	}
	for _, v := range variants {
		name := v.values
		if name == "" {
			name = "defaults"
		}
		t.Run(name, func(t *testing.T) {
			args := []string{chart}
			if v.values != "" {
				args = append(args, "-f", filepath.Join(chart, "ci", v.values))
			}
			helm(t, append([]string{"lint", "--strict"}, args...)...)
			out := helm(t, append([]string{"template", "ph", "--namespace", "egress"}, args...)...)
			r, err := decode(out)
			if err != nil {
				t.Fatal(err)
			}
			checkRendered(t, v, r)
		})
	}
}

func checkRendered(t *testing.T, v variant, r *rendered) {
	var pod corev1.PodSpec
	switch {
	case v.daemonSet:
		if len(r.daemonSets) != 1 || len(r.deployments) != 0 || len(r.hpas) != 0 || len(r.pdbs) != 0 {
			t.Fatalf("want one DaemonSet and no Deployment/HPA/PDB, got %d/%d/%d/%d",
				len(r.daemonSets), len(r.deployments), len(r.hpas), len(r.pdbs))
		}
		pod = r.daemonSets[0].Spec.Template.Spec
		if !pod.HostNetwork {
			t.Error("DaemonSet: hostNetwork is off")
		}
		sc := pod.Containers[0].SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Fatal("DaemonSet: no capabilities")
		}
		var add []string
		for _, c := range sc.Capabilities.Add {
			add = append(add, string(c))
		}
		if !reflect.DeepEqual(add, []string{"BPF", "NET_ADMIN", "PERFMON"}) ||
			!reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("DaemonSet capabilities add %v drop %v, want add [BPF NET_ADMIN PERFMON] drop [ALL]", add, sc.Capabilities.Drop)
		}
		if sc.Privileged != nil && *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("DaemonSet: privileged or may escalate")
		}
		hasPreStop := pod.Containers[0].Lifecycle != nil && pod.Containers[0].Lifecycle.PreStop != nil
		if hasPreStop != v.preStop {
			t.Errorf("DaemonSet preStop = %v, want %v", hasPreStop, v.preStop)
		}
		if v.preStop {
			cmd := pod.Containers[0].Lifecycle.PreStop.Exec.Command
			if !slices.Contains(cmd, "detach") || !hasMount(pod, "/sys/fs/bpf") {
				t.Errorf("preStop %v without detach or bpffs mount", cmd)
			}
		}
	default:
		if len(r.deployments) != 1 || len(r.daemonSets) != 0 {
			t.Fatalf("want one Deployment, got %d (and %d DaemonSets)", len(r.deployments), len(r.daemonSets))
		}
		d := r.deployments[0]
		pod = d.Spec.Template.Spec
		if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
			t.Error("Deployment: not runAsNonRoot")
		}
		sc := pod.Containers[0].SecurityContext
		if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("Deployment: capabilities %+v, want drop [ALL] and nothing added", sc)
		}
		if pod.HostNetwork {
			t.Error("Deployment: hostNetwork")
		}
		if v.ingressHPA {
			if len(r.hpas) != 1 || len(r.pdbs) != 1 || len(r.ingresses) != 1 || len(r.monitors) != 1 {
				t.Fatalf("want HPA, PDB, Ingress, ServiceMonitor: %d %d %d %d", len(r.hpas), len(r.pdbs), len(r.ingresses), len(r.monitors))
			}
			if ref := r.hpas[0].Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name {
				t.Errorf("HPA scales %s/%s, want Deployment/%s", ref.Kind, ref.Name, d.Name)
			}
			if d.Spec.Replicas != nil {
				t.Error("Deployment sets replicas while the HPA owns them")
			}
			svc := service(t, r, d.Name)
			port := r.ingresses[0].Spec.Rules[0].HTTP.Paths[0].Backend.Service.Port.Name
			if !hasPort(svc, port) || !hasPort(svc, r.monitors[0].Spec.Endpoints[0].Port) {
				t.Errorf("Service %s lacks the Ingress's port %q or the ServiceMonitor's %q", svc.Name, port, r.monitors[0].Spec.Endpoints[0].Port)
			}
			if !selects(r.pdbs[0].Spec.Selector, pod, d.Spec.Template.Labels) {
				t.Error("PDB does not select the pods")
			}
		}
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		t.Error("enableServiceLinks is not false: PROXY_HOPPER_PORT=tcp://… would override server.port")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the service account token is mounted")
	}
	c := pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "run" {
		t.Errorf("args %v do not start with run", c.Args)
	}
	// Env: $(VAR) references resolve to earlier variables, and every
	// Secret referenced is rendered or one the operator made.
	secrets := map[string]bool{}
	for _, s := range r.secrets {
		secrets[s.Name] = true
	}
	for _, s := range v.existing {
		secrets[s] = true
	}
	seen := map[string]bool{}
	for _, e := range c.Env {
		for _, ref := range refs(e.Value) {
			if !seen[ref] {
				t.Errorf("env %s uses $(%s) before it is defined", e.Name, ref)
			}
		}
		seen[e.Name] = true
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && !secrets[e.ValueFrom.SecretKeyRef.Name] {
			t.Errorf("env %s reads Secret %q, which nothing makes", e.Name, e.ValueFrom.SecretKeyRef.Name)
		}
	}
	if v.redis {
		if len(r.statefulSets) != 1 || !seen["PROXY_HOPPER_REDIS_URL"] {
			t.Fatalf("bundled Redis: %d StatefulSets, REDIS_URL set %v", len(r.statefulSets), seen["PROXY_HOPPER_REDIS_URL"])
		}
		if svc := service(t, r, r.statefulSets[0].Name); !strings.Contains(envValue(c, "PROXY_HOPPER_REDIS_URL"), svc.Name+":6379") {
			t.Errorf("redis URL %q does not name Service %s", envValue(c, "PROXY_HOPPER_REDIS_URL"), svc.Name)
		}
	}
	// The config volume: the rendered config passes validate.
	for _, vol := range pod.Volumes {
		if vol.Name != "config" {
			continue
		}
		if vol.ConfigMap == nil {
			if vol.Secret == nil || !slices.Contains(v.existing, vol.Secret.SecretName) {
				t.Errorf("config volume %+v is neither a rendered ConfigMap nor a known Secret", vol)
			}
			continue
		}
		var cm *corev1.ConfigMap
		for _, m := range r.configMaps {
			if m.Name == vol.ConfigMap.Name {
				cm = m
			}
		}
		if cm == nil {
			if !slices.Contains(v.existing, vol.ConfigMap.Name) {
				t.Errorf("config ConfigMap %s not rendered", vol.ConfigMap.Name)
			}
			continue
		}
		f := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(f, []byte(cm.Data["config.yaml"]), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := validate(t, f, nil); err != nil {
			t.Errorf("rendered config: %v", err)
		}
	}
}

func hasMount(pod corev1.PodSpec, path string) bool {
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.MountPath == path {
			return true
		}
	}
	return false
}

func service(t *testing.T, r *rendered, name string) *corev1.Service {
	t.Helper()
	for _, s := range r.services {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no Service %s", name)
	return nil
}

func hasPort(s *corev1.Service, name string) bool {
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

func selects(sel *metav1.LabelSelector, _ corev1.PodSpec, labels map[string]string) bool {
	if sel == nil || len(sel.MatchLabels) == 0 {
		return false
	}
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// refs returns the $(NAME) references in a Kubernetes env value.
func refs(s string) []string {
	var out []string
	for {
		i := strings.Index(s, "$(")
		if i < 0 {
			return out
		}
		j := strings.IndexByte(s[i:], ')')
		if j < 0 {
			return out
		}
		out = append(out, s[i+2:i+j])
		s = s[i+j:]
	}
}

// TestDecodeStrict proves the decoding is strict: a misspelt field in a
// Deployment is an error.
func TestDecodeStrict(t *testing.T) {
	bad := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      enableServiceLink: false\n")
	if _, err := decode(bad); err == nil {
		t.Fatal("misspelt enableServiceLink decoded without error")
	}
	good := bytes.Replace(bad, []byte("enableServiceLink:"), []byte("enableServiceLinks:"), 1)
	if _, err := decode(good); err != nil {
		t.Fatalf("valid Deployment: %v", err)
	}
}

// TestHelmSchemaRejectsTypos: values.schema.json refuses unknown
// top-level and section keys, and a kind other than the two workloads.
func TestHelmSchemaRejectsTypos(t *testing.T) {
	chart := filepath.Join(root(t), "deploy/helm/proxy-hopper")
	for _, set := range []string{"replicacount=2", "kind=statefulset", "backend.type=postgres", "admin.tokn=x"} {
		cmd := exec.Command(need(t, "HELM"), "lint", "--strict", chart, "--set", set)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("helm lint --set %s passed:\n%s", set, out)
		}
	}
}
