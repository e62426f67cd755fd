{{- define "stagetime.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "stagetime.labels" -}}
app.kubernetes.io/part-of: stagetime
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Environment shared by every service: Redis, logging, admin port. */}}
{{- define "stagetime.env" -}}
- name: REDIS_SERVER
  value: {{ .Values.redis.server | quote }}
- name: REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: REDIS_STREAM
  value: {{ .Values.redis.stream | quote }}
- name: REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
{{- if .Values.redis.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: REDIS_PASSWORD
{{- end }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: ADMIN_ADDR
  value: "0.0.0.0:{{ .Values.adminPort }}"
- name: TEKTON_API_VERSION
  value: {{ .Values.tekton.apiVersion | quote }}
- name: PIPELINE_WORKSPACE
  value: {{ .Values.tekton.pipelineNamespace | quote }}
- name: STAGETIME_NAMESPACES
  value: {{ join "," .Values.tekton.namespaces | quote }}
{{- end }}

{{/* Probes on the admin port. */}}
{{- define "stagetime.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: admin}
readinessProbe:
  httpGet: {path: /readyz, port: admin}
{{- end }}
