{{/* Names and labels, as `helm create` makes them. */}}
{{- define "signal-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "signal-worker.fullname" -}}
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

{{- define "signal-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "signal-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "signal-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "signal-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: signal-worker
{{- end }}

{{- define "signal-worker.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "signal-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "signal-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read DATABASE_URL (and the SASL credentials) from. */}}
{{- define "signal-worker.secretName" -}}
{{- default (include "signal-worker.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "signal-worker.hasSasl" -}}
{{- if .Values.kafka.sasl.mechanism }}true{{ end }}
{{- end }}

{{/*
Checks that no template can express as a schema: the database must be given, and no more
workers than partitions (the extra ones would idle, unready).
*/}}
{{- define "signal-worker.validate" -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.databaseUrl) }}
{{- fail "signal-worker: set secrets.databaseUrl (the PostgreSQL DSN) or secrets.existingSecret (a Secret with the key DATABASE_URL)" }}
{{- end }}
{{- if and (not .Values.autoscaling.enabled) (gt (int .Values.replicaCount) (int .Values.kafka.partitions)) }}
{{- fail (printf "signal-worker: replicaCount %d exceeds kafka.partitions %d; the extra workers would get no partition" (int .Values.replicaCount) (int .Values.kafka.partitions)) }}
{{- end }}
{{- if and .Values.kafka.sasl.mechanism (not .Values.secrets.existingSecret) (not .Values.secrets.kafkaSaslPassword) }}
{{- fail "signal-worker: kafka.sasl.mechanism is set: set secrets.kafkaSaslUsername and secrets.kafkaSaslPassword (or secrets.existingSecret)" }}
{{- end }}
{{- end }}

{{/* The settings of the ConfigMap (contract section 2, without the secrets). */}}
{{- define "signal-worker.config" -}}
KAFKA_BOOTSTRAP_SERVERS: {{ .Values.kafka.bootstrapServers | quote }}
KAFKA_TOPIC_PARTITIONS: {{ .Values.kafka.partitions | toString | quote }}
SIGNALS_TOPIC: {{ .Values.kafka.topics.signals | quote }}
PRICES_TOPIC: {{ .Values.kafka.topics.prices | quote }}
DLQ_TOPIC: {{ .Values.kafka.topics.deadLetters | quote }}
CONSUMER_GROUP: {{ .Values.kafka.consumerGroup | quote }}
KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.sasl.mechanism }}
KAFKA_SASL_MECHANISM: {{ . | quote }}
{{- end }}
{{- with .Values.kafka.sslCaFile }}
KAFKA_SSL_CAFILE: {{ . | quote }}
{{- end }}
HTTP_PORT: {{ .Values.http.port | toString | quote }}
LOG_LEVEL: {{ .Values.log.level | quote }}
LOG_FORMAT: {{ .Values.log.format | quote }}
{{- range $name, $value := .Values.extraConfig }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The keys of the chart's Secret. */}}
{{- define "signal-worker.secretData" -}}
DATABASE_URL: {{ .Values.secrets.databaseUrl | b64enc | quote }}
{{- with .Values.secrets.kafkaSaslUsername }}
KAFKA_SASL_USERNAME: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.kafkaSaslPassword }}
KAFKA_SASL_PASSWORD: {{ . | b64enc | quote }}
{{- end }}
{{- end }}

{{/* The container's environment: the ConfigMap, and the secrets one by one. */}}
{{- define "signal-worker.env" -}}
envFrom:
  - configMapRef:
      name: {{ .configMap }}
env:
  - name: DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "signal-worker.secretName" .root }}
        key: DATABASE_URL
{{- if include "signal-worker.hasSasl" .root }}
  - name: KAFKA_SASL_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ include "signal-worker.secretName" .root }}
        key: KAFKA_SASL_USERNAME
  - name: KAFKA_SASL_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "signal-worker.secretName" .root }}
        key: KAFKA_SASL_PASSWORD
{{- end }}
{{- end }}
