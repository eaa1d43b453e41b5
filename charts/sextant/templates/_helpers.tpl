{{/*
Names. Namespaced objects are called after the release (`sextant` when the
release is called sextant); cluster-scoped ones also carry the namespace, so
two releases in two namespaces never collide.
*/}}
{{- define "sextant.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sextant.clusterName" -}}
{{- printf "%s-%s" (include "sextant.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sextant.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sextant
{{ include "sextant.selectorLabels" . }}
{{- end -}}

{{/* Labels selecting the control-plane pods (Service, PDB, anti-affinity). */}}
{{- define "sextant.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app: sextant
{{- end -}}

{{- define "sextant.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sextant.proxyImage" -}}
{{- default (printf "sextant/proxy:%s" .Chart.AppVersion) .Values.proxyImage -}}
{{- end -}}

{{/* Where proxies reach the control plane: xDS and CA over TLS, as istiod. */}}
{{- define "sextant.discoveryAddress" -}}
{{- printf "%s.%s.svc:15012" .Values.service.name .Release.Namespace -}}
{{- end -}}

{{/*
The webhooks' clientConfig: the Service on 443, which forwards to 15017.
Argument: (list $ "/path").
*/}}
{{- define "sextant.webhookClientConfig" -}}
{{- $root := index . 0 -}}
service:
  name: {{ $root.Values.service.name }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ index . 1 }}
  port: 443
{{- end -}}
