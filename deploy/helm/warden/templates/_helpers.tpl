{{/*
Standard labels (app.kubernetes.io/*). Resource names are fixed (warden-ca, warden-agent,
warden-validator) rather than derived from the release name: istio-agent's CA_ADDR, the
CA's defaults (--webhook-service-name, --webhook-config-name) and the agent's ca-addr all
name them.
*/}}
{{- define "warden.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "warden.labels" -}}
helm.sh/chart: {{ include "warden.chart" .root }}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: warden
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "warden.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "warden.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* The database mode: "postgres" when database.urlSecret.name is set, else "sqlite". */}}
{{- define "warden.dbMode" -}}
{{- if .Values.database.urlSecret.name -}}postgres{{- else -}}sqlite{{- end -}}
{{- end -}}

{{/* SQLite allows one writer: refuse several replicas on it. */}}
{{- define "warden.checkValues" -}}
{{- if and (eq (include "warden.dbMode" .) "sqlite") (gt (int .Values.ca.replicas) 1) -}}
{{- fail "ca.replicas > 1 needs PostgreSQL: set database.urlSecret.name (a Secret holding postgres://...), or set ca.replicas: 1 to use SQLite on a PersistentVolumeClaim" -}}
{{- end -}}
{{- end -}}
