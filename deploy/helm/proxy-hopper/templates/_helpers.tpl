{{- define "proxy-hopper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "proxy-hopper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "proxy-hopper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "proxy-hopper.labels" -}}
helm.sh/chart: {{ include "proxy-hopper.chart" . }}
{{ include "proxy-hopper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "proxy-hopper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proxy-hopper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "proxy-hopper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "proxy-hopper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "proxy-hopper.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "proxy-hopper.isDaemonSet" -}}
{{- if eq .Values.kind "daemonset" }}true{{- else if eq .Values.kind "deployment" }}{{- else }}{{- fail "kind must be deployment or daemonset" }}{{- end }}
{{- end }}

{{/* Where config.yaml comes from. */}}
{{- define "proxy-hopper.configVolume" -}}
{{- if .Values.config.existingSecret }}
secret:
  secretName: {{ .Values.config.existingSecret }}
  items: [{key: config.yaml, path: config.yaml}]
{{- else if .Values.config.existingConfigMap }}
configMap:
  name: {{ .Values.config.existingConfigMap }}
  items: [{key: config.yaml, path: config.yaml}]
{{- else }}
configMap:
  name: {{ include "proxy-hopper.fullname" . }}
{{- end }}
{{- end }}

{{- define "proxy-hopper.redisName" -}}
{{- printf "%s-redis" (include "proxy-hopper.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "proxy-hopper.redisSecretName" -}}
{{- default (include "proxy-hopper.redisName" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "proxy-hopper.bundledRedis" -}}
{{- if and (eq .Values.backend.type "redis") .Values.redis.enabled (not .Values.backend.redis.url) (not .Values.backend.redis.existingSecret) }}true{{- end }}
{{- end }}

{{- define "proxy-hopper.adminSecretName" -}}
{{- default (printf "%s-admin" (include "proxy-hopper.fullname" .)) .Values.admin.existingSecret }}
{{- end }}

{{/* The agent's container: shared by the Deployment and the DaemonSet. */}}
{{- define "proxy-hopper.container" -}}
- name: {{ .Chart.Name }}
  image: {{ include "proxy-hopper.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - run
    - --config
    - /etc/proxy-hopper/config.yaml
    - --port
    - {{ .Values.service.port | quote }}
    {{- if .Values.config.watch }}
    - --watch-config
    {{- end }}
    {{- if .Values.metrics.enabled }}
    - --metrics
    - --metrics-port
    - {{ .Values.metrics.port | quote }}
    {{- else }}
    - --no-metrics
    {{- end }}
    {{- if .Values.admin.enabled }}
    - --admin
    - --admin-port
    - {{ .Values.admin.port | quote }}
    {{- else }}
    - --no-admin
    {{- end }}
    {{- if eq .Values.backend.type "redis" }}
    - --backend
    - redis
    {{- if .Values.backend.redis.keyPrefix }}
    - --redis-key-prefix
    - {{ .Values.backend.redis.keyPrefix | quote }}
    {{- end }}
    {{- else if ne .Values.backend.type "memory" }}
    {{- fail "backend.type must be memory or redis" }}
    {{- end }}
  env:
    {{- if and .Values.admin.enabled (or .Values.admin.existingSecret .Values.admin.token) }}
    - name: PROXY_HOPPER_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "proxy-hopper.adminSecretName" . }}
          key: {{ .Values.admin.existingSecretKey }}
    {{- end }}
    {{- if eq .Values.backend.type "redis" }}
    {{- if .Values.backend.redis.existingSecret }}
    - name: PROXY_HOPPER_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.backend.redis.existingSecret }}
          key: {{ .Values.backend.redis.existingSecretKey }}
    {{- else if .Values.backend.redis.url }}
    - name: PROXY_HOPPER_REDIS_URL
      value: {{ .Values.backend.redis.url | quote }}
    {{- else if .Values.redis.enabled }}
    {{- if .Values.redis.auth.enabled }}
    - name: REDIS_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ include "proxy-hopper.redisSecretName" . }}
          key: {{ .Values.redis.auth.existingSecretPasswordKey }}
    - name: PROXY_HOPPER_REDIS_URL
      value: "redis://:$(REDIS_PASSWORD)@{{ include "proxy-hopper.redisName" . }}:6379/0"
    {{- else }}
    - name: PROXY_HOPPER_REDIS_URL
      value: "redis://{{ include "proxy-hopper.redisName" . }}:6379/0"
    {{- end }}
    {{- else }}
    {{- fail "backend.type=redis needs backend.redis.url, backend.redis.existingSecret or redis.enabled" }}
    {{- end }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.service.port }}
      protocol: TCP
    {{- if .Values.metrics.enabled }}
    - name: metrics
      containerPort: {{ .Values.metrics.port }}
      protocol: TCP
    {{- end }}
    {{- if .Values.admin.enabled }}
    - name: admin
      containerPort: {{ .Values.admin.port }}
      protocol: TCP
    {{- end }}
  livenessProbe:
    tcpSocket:
      port: http
    initialDelaySeconds: 5
    periodSeconds: 10
  readinessProbe:
    tcpSocket:
      port: http
    initialDelaySeconds: 2
    periodSeconds: 5
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if include "proxy-hopper.isDaemonSet" . }}
  securityContext:
    # Root in the host network, but with only these capabilities and no
    # way to gain more.
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
      add: {{ toJson .Values.daemonset.capabilities }}
    {{- with .Values.daemonset.seccompProfile }}
    seccompProfile:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- if and .Values.daemonset.bpffs.enabled .Values.daemonset.bpffs.preStopDetach }}
  lifecycle:
    preStop:
      exec:
        # Removes the pinned redirect so that the node's traffic goes
        # direct while no agent runs (fail-open on eviction).
        command: ["/usr/local/bin/proxy-hopper", "bpf", "detach", "--pin-dir", {{ .Values.daemonset.bpffs.pinDir | quote }}]
  {{- end }}
  {{- else }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/proxy-hopper
      readOnly: true
    {{- if include "proxy-hopper.isDaemonSet" . }}
    {{- if .Values.daemonset.cgroup.enabled }}
    - name: cgroup
      mountPath: /sys/fs/cgroup
      readOnly: true
    {{- end }}
    {{- if .Values.daemonset.bpffs.enabled }}
    - name: bpffs
      mountPath: /sys/fs/bpf
    {{- end }}
    {{- end }}
{{- end }}

{{- define "proxy-hopper.podSpec" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "proxy-hopper.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
enableServiceLinks: {{ .Values.enableServiceLinks }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- if include "proxy-hopper.isDaemonSet" . }}
hostNetwork: {{ .Values.daemonset.hostNetwork }}
dnsPolicy: {{ .Values.daemonset.dnsPolicy }}
{{- else }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
containers:
  {{- include "proxy-hopper.container" . | nindent 2 }}
volumes:
  - name: config
    {{- include "proxy-hopper.configVolume" . | nindent 4 }}
  {{- if include "proxy-hopper.isDaemonSet" . }}
  {{- if .Values.daemonset.cgroup.enabled }}
  - name: cgroup
    hostPath:
      path: {{ .Values.daemonset.cgroup.hostPath }}
      type: Directory
  {{- end }}
  {{- if .Values.daemonset.bpffs.enabled }}
  - name: bpffs
    hostPath:
      path: {{ .Values.daemonset.bpffs.hostPath }}
      type: Directory
  {{- end }}
  {{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "proxy-hopper.podAnnotations" -}}
{{- if not (or .Values.config.existingConfigMap .Values.config.existingSecret) }}
checksum/config: {{ .Values.config.inline | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
