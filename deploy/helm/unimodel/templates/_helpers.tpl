{{/*
Names, labels and the few values more than one template needs.
*/}}

{{- define "unimodel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "unimodel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "unimodel.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "unimodel.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", for the objects other than the gateway's */}}
{{- define "unimodel.componentName" -}}
{{- printf "%s-%s" (include "unimodel.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels of one component. The gateway's pods carry app.kubernetes.io/name: unimodel (the label
deploy/prometheus/scrape.yaml keeps, as job "unimodel"); the other components are named apart
(unimodel-vllm, unimodel-redis, unimodel-postgresql) so that scrape job never takes them for gateways.
*/}}
{{- define "unimodel.selectorLabels" -}}
app.kubernetes.io/name: {{ if eq .component "gateway" }}{{ include "unimodel.name" .root }}{{ else }}{{ printf "%s-%s" (include "unimodel.name" .root) .component }}{{ end }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "unimodel.labels" -}}
{{ include "unimodel.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "unimodel.name" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "unimodel.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "unimodel.fullname" .) -}}
{{- end -}}

{{/*
Whether the Secret holds a key: "true" or "". With secrets.existingSecret, the keys listed in
secrets.existingSecretKeys; else the keys whose value is set here.
*/}}
{{- define "unimodel.secretHas" -}}
{{- $v := .root.Values -}}
{{- if $v.secrets.existingSecret -}}
{{- if has .key $v.secrets.existingSecretKeys }}true{{ end -}}
{{- else -}}
{{- $set := dict
    "api-keys" (gt (len $v.secrets.apiKeys) 0)
    "admin-key" (ne $v.secrets.adminKey "")
    "metrics-key" (ne $v.secrets.metricsKey "")
    "log-secret" (ne $v.secrets.logSecret "")
    "upstream-api-key" (ne $v.secrets.upstreamApiKey "")
    "log-db" (or $v.postgresql.enabled (ne $v.externalDatabase.url ""))
    "redis-url" (and (not $v.redis.enabled) (ne $v.externalRedis.url ""))
-}}
{{- if index $set .key }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* The vLLM Service's port name: what the gateway's k8s:// upstream asks the EndpointSlices for. */}}
{{- define "unimodel.vllmPortName" -}}http{{- end -}}

{{/* The label selector of the gateway pods' series in Prometheus (the scrape job, this namespace). */}}
{{- define "unimodel.promSelector" -}}
job="{{ .Values.autoscaling.prometheus.job }}", namespace="{{ .Release.Namespace }}"
{{- end -}}
