{{/*
Names and labels (helm create's conventions), the component table, and what every Switchyard container shares.
*/}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "gateway") */}}
{{- define "switchyard.componentLabels" -}}
{{ include "switchyard.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchyard.componentSelector" -}}
{{ include "switchyard.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secret names: the chart's own, or the operator's existing ones. */}}
{{- define "switchyard.keysSecret" -}}
{{- default (printf "%s-keys" (include "switchyard.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "switchyard.providersSecret" -}}
{{- default (printf "%s-providers" (include "switchyard.fullname" .)) .Values.providerKeys.existingSecret }}
{{- end }}

{{- define "switchyard.natsAuthSecret" -}}
{{- default (printf "%s-nats-auth" (include "switchyard.fullname" .)) .Values.nats.auth.existingSecret }}
{{- end }}

{{- define "switchyard.natsEncryptionSecret" -}}
{{- default (printf "%s-nats-encryption" (include "switchyard.fullname" .)) .Values.nats.cluster.encryption.existingSecret }}
{{- end }}

{{- define "switchyard.natsInChart" -}}
{{- if not .Values.nats.external.url }}true{{ end }}
{{- end }}

{{- define "switchyard.natsName" -}}
{{- printf "%s-nats" (include "switchyard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.natsUrl" -}}
{{- if .Values.nats.external.url }}
{{- .Values.nats.external.url }}
{{- else }}
{{- printf "%s://%s:4222" (ternary "tls" "nats" .Values.nats.tls.enabled) (include "switchyard.natsName" .) }}
{{- end }}
{{- end }}

{{- define "switchyard.natsMonitoring" -}}
{{- if .Values.nats.external.url }}
{{- required "nats.external.monitoringEndpoint is needed for KEDA's nats-jetstream trigger" .Values.nats.external.monitoringEndpoint }}
{{- else }}
{{- printf "%s-headless.%s.svc.cluster.local:8222" (include "switchyard.natsName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
A value kept across upgrades: the given one, else what the existing Secret holds, else a new random one.
(dict "ctx" $ "secret" name "key" key "value" given)
*/}}
{{- define "switchyard.persistentSecret" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- if and $existing (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- printf "%s%s" (.prefix | default "") (randAlphaNum 40) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The component table: one Deployment each. Every target of services/targets.py is run by one of them
(tests/deploy/test_chart.py checks it). Fields: name, targets (--target), role (NATS user), values (the
values key with its settings), provider, consumers (durable consumers, for KEDA), keys (needs the API-key
index: gateway and policy), gateway.
*/}}
{{- define "switchyard.components" -}}
components:
  - name: gateway
    targets: gateway
    role: gateway
    values: gateway
    consumers: []
    keys: true
    gateway: true
{{- if .Values.policyRouter.fused }}
  - name: policy-router
    targets: policy,router
    role: policy+router
    values: policyRouter
    consumers: [policy, policy-batch, policy-settle, router, router-batch]
    keys: true
{{- else }}
  - name: policy
    targets: policy
    role: policy
    values: policyRouter
    consumers: [policy, policy-batch, policy-settle]
    keys: true
  - name: router
    targets: router
    role: router
    values: router
    consumers: [router, router-batch]
    keys: false
{{- end }}
{{- range $provider, $_ := .Values.workers.providers }}
  - name: {{ printf "worker-%s" $provider | quote }}
    targets: {{ printf "worker:%s" $provider | quote }}
    role: worker
    values: workers
    provider: {{ $provider | quote }}
    consumers: [{{ printf "worker-%s" $provider | quote }}, {{ printf "worker-%s-batch" $provider | quote }}]
    keys: false
{{- end }}
  - name: audit
    targets: audit
    role: audit
    values: audit
    consumers: [audit]
    keys: false
{{- end }}

{{/* A component's settings: its values block (a worker's: the workers defaults under its provider's entry). */}}
{{- define "switchyard.componentValues" -}}
{{- $c := .component }}
{{- if $c.provider }}
{{- $defaults := omit .ctx.Values.workers "providers" | deepCopy }}
{{- $own := index .ctx.Values.workers.providers $c.provider | default dict | deepCopy }}
{{- toYaml (mergeOverwrite $defaults $own) }}
{{- else }}
{{- toYaml (index .ctx.Values $c.values) }}
{{- end }}
{{- end }}

{{- define "switchyard.componentName" -}}
{{- printf "%s-%s" (include "switchyard.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The port a component answers /healthz, /readyz and /metrics on. */}}
{{- define "switchyard.opsPort" -}}
{{- if .gateway }}{{ .port }}{{ else }}9090{{ end }}
{{- end }}

{{/* The NATS users a deployment connects as (tools/nats_auth.py DEPLOY_USERS: the roles of
shared/bus/permissions.py, and policy and router fused). */}}
{{- define "switchyard.natsRoles" -}}
roles: [gateway, policy, router, "policy+router", worker, audit]
{{- end }}

{{/* The NATS auth Secret's key holding a user's password: policy+router → policy-router-password. */}}
{{- define "switchyard.natsPasswordKey" -}}
{{- printf "%s-password" (. | replace "+" "-") }}
{{- end }}
