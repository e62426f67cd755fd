{{- define "stagetime.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "stagetime.labels" -}}
app.kubernetes.io/part-of: stagetime
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* Refusals: nothing insecure renders unless asked for by name. */}}
{{- define "stagetime.checks" -}}
{{- if and (not .Values.redis.existingSecret) (not .Values.redis.insecureLocalDevelopment) }}
{{- fail "redis.existingSecret is required (a secret with key REDIS_PASSWORD); set redis.insecureLocalDevelopment=true only for a throwaway local Redis" }}
{{- end }}
{{- if and (eq .Values.server.auth "none") (not .Values.server.allowUnauthenticated) }}
{{- fail "server.auth=none lets anyone run any pipeline; set server.allowUnauthenticated=true to confirm (local development only)" }}
{{- end }}
{{- with .Values.tekton.informingNamespace }}
{{- $targets := concat (list $.Values.tekton.pipelineNamespace) $.Values.tekton.namespaces }}
{{- if $.Values.tekton.namespaceOverride }}{{ $targets = append $targets $.Values.tekton.namespaceOverride }}{{ end }}
{{- range $targets }}
{{- if ne . $.Values.tekton.informingNamespace }}
{{- fail (printf "tekton.informingNamespace=%s is narrower than the namespaces runs may use (%s is one); leave it empty to watch them all" $.Values.tekton.informingNamespace .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not .Values.server.tls.secretName) (not .Values.server.tls.generate) (not .Values.server.tls.insecurePlaintext) }}
{{- fail "server.tls needs a secretName or generate=true; set server.tls.insecurePlaintext=true to send tokens in clear text (local development only)" }}
{{- end }}
{{- if and (eq .Values.server.auth "token") (not .Values.server.tokenSecret) }}
{{- fail "server.auth=token needs server.tokenSecret (a secret with key `tokens`)" }}
{{- end }}
{{- end }}

{{/* The Secret holding the server's certificate: the given one, else the generated one, else
     none (plaintext, only with server.tls.insecurePlaintext). */}}
{{- define "stagetime.tlsSecret" -}}
{{- if .Values.server.tls.secretName }}{{ .Values.server.tls.secretName }}
{{- else if and .Values.server.tls.generate (not .Values.server.tls.insecurePlaintext) }}{{ .Release.Name }}-stagetime-server-tls
{{- end }}
{{- end }}

{{/* The Secret (key ca.crt) clients verify the server with. */}}
{{- define "stagetime.caSecret" -}}
{{- if .Values.server.tls.caSecretName }}{{ .Values.server.tls.caSecretName }}
{{- else if and (not .Values.server.tls.secretName) .Values.server.tls.generate (not .Values.server.tls.insecurePlaintext) }}{{ .Release.Name }}-stagetime-server-tls
{{- end }}
{{- end }}

{{/* The server's URL as clients inside the cluster use it. */}}
{{- define "stagetime.serverUrl" -}}
{{ ternary "https" "http" (ne (include "stagetime.tlsSecret" .) "") }}://stagetime-server:{{ .Values.server.port }}
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
{{- if .Values.redis.username }}
- name: REDIS_USERNAME
  value: {{ .Values.redis.username | quote }}
{{- end }}
- name: REDIS_TLS
  value: {{ .Values.redis.tls | quote }}
{{- if .Values.redis.caSecret }}
- name: REDIS_CA_FILE
  value: /etc/stagetime/redis-ca/ca.crt
{{- end }}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
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
