{{- /* 55 characters, not Helm's usual 63: the metrics Service adds "-metrics" and a Service name has at most 63
(a release name of 45 to 53 characters failed to install). */ -}}
{{- define "distillctl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "distillctl.serviceAccountName" -}}
{{- default (include "distillctl.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "distillctl.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "distillctl.labels" -}}
{{ include "distillctl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
