{{- define "portcullis.name" -}}portcullis-operator{{- end }}

{{/* The names of the namespaced objects: fullnameOverride, or portcullis-operator. */}}
{{- define "portcullis.fullname" -}}{{ default (include "portcullis.name" .) .Values.fullnameOverride }}{{- end }}

{{/* Cluster-scoped objects carry the release name unless fullnameOverride names them. */}}
{{- define "portcullis.clusterName" -}}{{ default (printf "%s-portcullis-operator" .Release.Name) .Values.fullnameOverride }}{{- end }}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: portcullis
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "portcullis.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}{{- end -}}
{{- end }}
