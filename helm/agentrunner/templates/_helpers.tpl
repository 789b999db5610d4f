{{/*
Names, labels, and the one place where values become the binary's environment
(agentrunner.env). Every setting of the binary is an environment variable; the
names are the configuration contract in ARCHITECTURE.md §10 and docs/deploy.md.
*/}}

{{- define "agentrunner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentrunner.fullname" -}}
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

{{- define "agentrunner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "agentrunner.labels" -}}
helm.sh/chart: {{ include "agentrunner.chart" . }}
{{ include "agentrunner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentrunner
{{- end }}

{{/* Labels that select every pod of the release (runner, worker, migrate). */}}
{{- define "agentrunner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentrunner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "runner"). */}}
{{- define "agentrunner.componentSelectorLabels" -}}
{{ include "agentrunner.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "agentrunner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentrunner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agentrunner.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{- define "agentrunner.gracePeriod" -}}
{{- $drain := int .Values.runner.drainTimeoutSeconds }}
{{- $grace := int .Values.runner.terminationGracePeriodSeconds }}
{{- if eq $grace 0 }}{{ $grace = add $drain 30 }}{{ end }}
{{- $grace }}
{{- end }}

{{/*
Checks across values that the schema cannot express clearly. Included once, by
the runner Deployment; a failure stops install, upgrade, template and lint.
*/}}
{{- define "agentrunner.validate" -}}
{{- $v := .Values }}
{{- $grace := int $v.runner.terminationGracePeriodSeconds }}
{{- if and (ne $grace 0) (le $grace (int $v.runner.drainTimeoutSeconds)) }}
{{- fail (printf "runner.terminationGracePeriodSeconds (%d) must be longer than runner.drainTimeoutSeconds (%d), or the kubelet kills pods mid-drain" $grace (int $v.runner.drainTimeoutSeconds)) }}
{{- end }}
{{- if eq $v.cipher "local" }}
{{- if not $v.keyring.existingSecret }}
{{- fail "cipher=local needs keyring.existingSecret (a Secret holding the local keyring file)" }}
{{- end }}
{{- if not $v.keyring.nonProductionAcknowledged }}
{{- fail "cipher=local protects bot tokens with a Kubernetes Secret only; it is for development and staging. Set keyring.nonProductionAcknowledged=true to confirm, or use cipher=transit" }}
{{- end }}
{{- else }}
{{- if not $v.vault.address }}
{{- fail "cipher=transit needs vault.address" }}
{{- end }}
{{- if and (eq $v.vault.auth "approle") (not $v.vault.approle.existingSecret) }}
{{- fail "vault.auth=approle needs vault.approle.existingSecret (a Secret with the role_id and secret_id)" }}
{{- end }}
{{- if and (eq $v.vault.auth "token") (not $v.vault.token.existingSecret) }}
{{- fail "vault.auth=token needs vault.token.existingSecret" }}
{{- end }}
{{- end }}
{{- if and $v.temporal.tls.enabled (not $v.temporal.tls.existingSecret) }}
{{- fail "temporal.tls.enabled needs temporal.tls.existingSecret (client certificate, key and CA)" }}
{{- end }}
{{- end }}

{{/* Whether the pod talks to Vault with its Kubernetes ServiceAccount token. */}}
{{- define "agentrunner.vaultKubernetesAuth" -}}
{{- if and (ne .Values.cipher "local") (eq .Values.vault.auth "kubernetes") }}true{{ end }}
{{- end }}

{{/*
The environment of an agentrunner container: (dict "root" $ "component" C) with
C one of runner, worker, migrate. This is the chart's whole contract with the
binary: values in, the documented variable names out. Secrets arrive as files
(…_FILE) or secretKeyRef, never as literal values.
*/}}
{{- define "agentrunner.env" -}}
{{- $v := .root.Values -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.database.existingSecret | quote }}
      key: {{ $v.database.key | quote }}
- name: AGENTRUNNER_LOG_FORMAT
  value: json
- name: AGENTRUNNER_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
{{- if ne .component "migrate" }}
- name: AGENTRUNNER_RUNNER_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: TEMPORAL_ADDRESS
  value: {{ $v.temporal.address | quote }}
- name: TEMPORAL_NAMESPACE
  value: {{ $v.temporal.namespace | quote }}
- name: TEMPORAL_TASK_QUEUE
  value: {{ $v.temporal.taskQueue | quote }}
{{- if $v.temporal.tls.enabled }}
- name: TEMPORAL_TLS_CERT
  value: /etc/agentrunner/temporal-tls/tls.crt
- name: TEMPORAL_TLS_KEY
  value: /etc/agentrunner/temporal-tls/tls.key
- name: TEMPORAL_TLS_CA
  value: /etc/agentrunner/temporal-tls/ca.crt
{{- if $v.temporal.tls.serverName }}
- name: TEMPORAL_TLS_SERVER_NAME
  value: {{ $v.temporal.tls.serverName | quote }}
{{- end }}
{{- end }}
- name: BUKO_API_URL
  value: {{ $v.buko.apiURL | quote }}
{{- if $v.buko.gatewayURL }}
- name: BUKO_GATEWAY_URL
  value: {{ $v.buko.gatewayURL | quote }}
{{- end }}
- name: AGENTRUNNER_CIPHER
  value: {{ $v.cipher | quote }}
{{- if eq $v.cipher "local" }}
- name: AGENTRUNNER_KEYRING
  value: /etc/agentrunner/keyring/keyring
{{- else }}
- name: VAULT_ADDR
  value: {{ $v.vault.address | quote }}
{{- if $v.vault.namespace }}
- name: VAULT_NAMESPACE
  value: {{ $v.vault.namespace | quote }}
{{- end }}
{{- if $v.vault.caSecret.name }}
- name: VAULT_CACERT
  value: /etc/agentrunner/vault-ca/ca.crt
{{- end }}
- name: AGENTRUNNER_VAULT_AUTH
  value: {{ $v.vault.auth | quote }}
{{- if eq $v.vault.auth "kubernetes" }}
- name: AGENTRUNNER_VAULT_K8S_ROLE
  value: {{ $v.vault.kubernetes.role | quote }}
- name: AGENTRUNNER_VAULT_K8S_MOUNT
  value: {{ $v.vault.kubernetes.mount | quote }}
{{- else if eq $v.vault.auth "approle" }}
- name: AGENTRUNNER_VAULT_APPROLE_ROLE_ID
  valueFrom:
    secretKeyRef:
      name: {{ $v.vault.approle.existingSecret | quote }}
      key: {{ $v.vault.approle.roleIdKey | quote }}
- name: AGENTRUNNER_VAULT_APPROLE_SECRET_ID_FILE
  value: /etc/agentrunner/vault-approle/secret_id
{{- else if eq $v.vault.auth "token" }}
- name: VAULT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.vault.token.existingSecret | quote }}
      key: {{ $v.vault.token.key | quote }}
{{- end }}
- name: AGENTRUNNER_TRANSIT_MOUNT
  value: {{ $v.vault.transit.mount | quote }}
- name: AGENTRUNNER_TRANSIT_KEY
  value: {{ $v.vault.transit.key | quote }}
{{- end }}
- name: AGENTRUNNER_SHARDS
  value: {{ $v.runner.shards | quote }}
- name: AGENTRUNNER_LEASE_TTL
  value: {{ printf "%ds" (int $v.runner.leaseTTLSeconds) | quote }}
- name: AGENTRUNNER_DRAIN_TIMEOUT
  value: {{ printf "%ds" (int $v.runner.drainTimeoutSeconds) | quote }}
- name: AGENTRUNNER_ADMIN_ADDR
  value: {{ printf ":%d" (int $v.admin.port) | quote }}
- name: AGENTRUNNER_METRICS_ADDR
  value: {{ printf ":%d" (int $v.metrics.port) | quote }}
{{- if $v.admin.existingSecret }}
- name: AGENTRUNNER_ADMIN_TOKEN_FILE
  value: /etc/agentrunner/admin/token
{{- end }}
{{- if and (eq .component "runner") $v.worker.separate }}
- name: AGENTRUNNER_WORKER
  value: "false"
{{- end }}
- name: AGENTRUNNER_AGENT_DENY_PRIVATE
  value: {{ $v.worker.agentDenyPrivate | quote }}
{{- end }}
{{- range $v.extraEnv }}
- name: {{ .name | quote }}
  value: {{ .value | quote }}
{{- end }}
{{- end }}

{{/* Volume mounts matching agentrunner.env: (dict "root" $ "component" C). */}}
{{- define "agentrunner.volumeMounts" -}}
{{- $v := .root.Values -}}
- name: tmp
  mountPath: /tmp
{{- if ne .component "migrate" }}
{{- if $v.temporal.tls.enabled }}
- name: temporal-tls
  mountPath: /etc/agentrunner/temporal-tls
  readOnly: true
{{- end }}
{{- if eq $v.cipher "local" }}
- name: keyring
  mountPath: /etc/agentrunner/keyring
  readOnly: true
{{- else }}
{{- if $v.vault.caSecret.name }}
- name: vault-ca
  mountPath: /etc/agentrunner/vault-ca
  readOnly: true
{{- end }}
{{- if eq $v.vault.auth "approle" }}
- name: vault-approle
  mountPath: /etc/agentrunner/vault-approle
  readOnly: true
{{- end }}
{{- if and (eq $v.vault.auth "kubernetes") $v.vault.kubernetes.tokenAudience }}
- name: vault-sa-token
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end }}
{{- end }}
{{- if $v.admin.existingSecret }}
- name: admin-token
  mountPath: /etc/agentrunner/admin
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes matching agentrunner.volumeMounts: (dict "root" $ "component" C). */}}
{{- define "agentrunner.volumes" -}}
{{- $v := .root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if ne .component "migrate" }}
{{- if $v.temporal.tls.enabled }}
- name: temporal-tls
  secret:
    secretName: {{ $v.temporal.tls.existingSecret | quote }}
    defaultMode: 0440
    items:
      - key: {{ $v.temporal.tls.certKey | quote }}
        path: tls.crt
      - key: {{ $v.temporal.tls.keyKey | quote }}
        path: tls.key
      - key: {{ $v.temporal.tls.caKey | quote }}
        path: ca.crt
{{- end }}
{{- if eq $v.cipher "local" }}
- name: keyring
  secret:
    secretName: {{ $v.keyring.existingSecret | quote }}
    defaultMode: 0440
    items:
      - key: {{ $v.keyring.key | quote }}
        path: keyring
{{- else }}
{{- if $v.vault.caSecret.name }}
- name: vault-ca
  secret:
    secretName: {{ $v.vault.caSecret.name | quote }}
    defaultMode: 0440
    items:
      - key: {{ $v.vault.caSecret.key | quote }}
        path: ca.crt
{{- end }}
{{- if eq $v.vault.auth "approle" }}
- name: vault-approle
  secret:
    secretName: {{ $v.vault.approle.existingSecret | quote }}
    defaultMode: 0440
    items:
      - key: {{ $v.vault.approle.roleIdKey | quote }}
        path: role_id
      - key: {{ $v.vault.approle.secretIdKey | quote }}
        path: secret_id
{{- end }}
{{- if and (eq $v.vault.auth "kubernetes") $v.vault.kubernetes.tokenAudience }}
- name: vault-sa-token
  projected:
    defaultMode: 0440
    sources:
      - serviceAccountToken:
          audience: {{ $v.vault.kubernetes.tokenAudience | quote }}
          expirationSeconds: 600
          path: token
{{- end }}
{{- end }}
{{- if $v.admin.existingSecret }}
- name: admin-token
  secret:
    secretName: {{ $v.admin.existingSecret | quote }}
    defaultMode: 0440
    items:
      - key: {{ $v.admin.key | quote }}
        path: token
{{- end }}
{{- end }}
{{- end }}

{{/* The restricted-profile security context of every pod. */}}
{{- define "agentrunner.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted-profile security context of every container. */}}
{{- define "agentrunner.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The pod template of a long-running component:
(dict "root" $ "component" "runner"|"worker" "args" (list …) "resources" R).
*/}}
{{- define "agentrunner.podTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "agentrunner.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "agentrunner.serviceAccountName" $root }}
  {{- /* Only Vault's Kubernetes auth needs a token; a projected one with an audience replaces the automounted one. */}}
  automountServiceAccountToken: {{ if and (include "agentrunner.vaultKubernetesAuth" $root) (not $v.vault.kubernetes.tokenAudience) }}true{{ else }}false{{ end }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ include "agentrunner.gracePeriod" $root }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . | quote }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "agentrunner.podSecurityContext" $root | nindent 4 }}
  {{- if $v.topologySpread.enabled }}
  topologySpreadConstraints:
    {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
    - topologyKey: {{ . }}
      maxSkew: {{ $v.topologySpread.maxSkew }}
      whenUnsatisfiable: {{ $v.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "agentrunner.componentSelectorLabels" (dict "root" $root "component" $.component) | nindent 10 }}
      matchLabelKeys:
        - pod-template-hash
    {{- end }}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: agentrunner
      image: {{ include "agentrunner.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "agentrunner.env" (dict "root" $root "component" .component) | nindent 8 }}
      ports:
        {{- if eq .component "runner" }}
        - name: admin
          containerPort: {{ $v.admin.port }}
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ $v.metrics.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: 2
        failureThreshold: 60
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      {{- with .resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "agentrunner.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "agentrunner.volumeMounts" (dict "root" $root "component" .component) | nindent 8 }}
  volumes:
    {{- include "agentrunner.volumes" (dict "root" $root "component" .component) | nindent 4 }}
{{- end }}
