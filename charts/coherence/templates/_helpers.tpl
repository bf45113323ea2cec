{{/*
Names. `coherence.fullname` is the prefix of every object: the release name when it contains
the chart name (release `coherence` gives `coherence-verifier`, the name the binaries default
to), else `<release>-<chart>`.
*/}}
{{- define "coherence.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coherence.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "coherence.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass a dict with "root" (the top context) and "component". */}}
{{- define "coherence.labels" -}}
helm.sh/chart: {{ include "coherence.chart" .root }}
{{ include "coherence.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: coherence
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades (Deployment selectors are immutable). */}}
{{- define "coherence.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coherence.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Object names. */}}
{{- define "coherence.operator.name" -}}{{ include "coherence.fullname" . }}-operator{{- end }}
{{- define "coherence.webhook.service" -}}{{ include "coherence.fullname" . }}-operator-webhook{{- end }}
{{- define "coherence.webhook.configuration" -}}{{ include "coherence.fullname" . }}-sidecar-injector{{- end }}
{{- define "coherence.webhook.secret" -}}{{ include "coherence.fullname" . }}-operator-webhook-tls{{- end }}
{{- define "coherence.verifier.name" -}}{{ include "coherence.fullname" . }}-verifier{{- end }}
{{- define "coherence.verifier.wal" -}}{{ include "coherence.fullname" . }}-verifier-wal{{- end }}

{{- define "coherence.verifier.tlsSecret" -}}
{{- default (printf "%s-verifier-tls" (include "coherence.fullname" .)) .Values.mtls.verifierSecretName }}
{{- end }}
{{- define "coherence.operator.clientSecret" -}}
{{- default (printf "%s-operator-client" (include "coherence.fullname" .)) .Values.mtls.operatorClientSecretName }}
{{- end }}
{{- define "coherence.sidecar.clientSecret" -}}
{{- default (printf "%s-sidecar-client" (include "coherence.fullname" .)) .Values.mtls.sidecarClientSecretName }}
{{- end }}

{{/* The verifier as the operator and the sidecars reach it. */}}
{{- define "coherence.verifier.endpoint" -}}
{{- printf "%s://%s.%s.svc:8443" (ternary "https" "http" .Values.mtls.enabled) (include "coherence.verifier.name" .) .Release.Namespace }}
{{- end }}

{{/* Images: the tag defaults to the chart's appVersion. */}}
{{- define "coherence.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{/* The issuer of the leaf certificates: the chart's CA Issuer, or certManager.issuerRef. */}}
{{- define "coherence.issuerRef" -}}
{{- if .Values.certManager.issuerRef -}}
{{- toYaml .Values.certManager.issuerRef }}
{{- else -}}
name: {{ include "coherence.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end }}
{{- end }}

{{/* Pod Security "restricted": the pod-level security context. */}}
{{- define "coherence.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod Security "restricted": the container-level security context. */}}
{{- define "coherence.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Checks of value combinations the schema cannot express; each fails with the reason. */}}
{{- define "coherence.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.certManager.enabled) }}
{{- fail "operator.replicas > 1 needs certManager.enabled=true: without it every replica generates its own webhook certificate and sets the caBundle to its own CA, so the API server would trust only one of them" }}
{{- end }}
{{- $v := .Values.verifier }}
{{- $scaled := or $v.autoscaling.enabled (gt (int $v.replicas) 1) }}
{{- if and $scaled (eq .Values.dedup.backend "memory") }}
{{- fail "verifier: more than one replica (verifier.replicas > 1 or verifier.autoscaling.enabled) needs a shared dedup store: set dedup.backend to redis or postgres (the memory store is per process, so two replicas would each accept the same record)" }}
{{- end }}
{{- if and $scaled (eq $v.wal.volume "persistentVolumeClaim") }}
{{- fail "verifier: more than one replica cannot share the ReadWriteOnce WAL claim: set verifier.wal.volume to emptyDir (each pod keeps its own WAL) or keep one replica" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "verifier.autoscaling: minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if $v.podDisruptionBudget.enabled }}
{{- $max := not (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable) }}
{{- $min := not (kindIs "invalid" $v.podDisruptionBudget.minAvailable) }}
{{- if eq $max $min }}
{{- fail "verifier.podDisruptionBudget: set exactly one of maxUnavailable and minAvailable (the other null)" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.dedup.backend "redis") (not .Values.dedup.redis.secretName) }}
{{- fail "dedup.redis.secretName: expected the name of a Secret holding REDIS_ADDR (dedup.backend is redis)" }}
{{- end }}
{{- if and (eq .Values.dedup.backend "postgres") (not .Values.dedup.postgres.secretName) }}
{{- fail "dedup.postgres.secretName: expected the name of a Secret holding DATABASE_URL (dedup.backend is postgres)" }}
{{- end }}
{{- if and $v.metricsAuth.enabled (not $v.metricsAuth.secretName) }}
{{- fail "verifier.metricsAuth.secretName: expected the name of a Secret holding METRICS_USER and METRICS_PASS" }}
{{- end }}
{{- end }}
