{{/* Common names and labels. */}}
{{- define "meshguard.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "meshguard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "meshguard.labels" -}}
app.kubernetes.io/name: {{ include "meshguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "meshguard.commonLabels" . }}
{{- end -}}

{{/* commonLabels are the labels that selectorLabels do not carry. */}}
{{- define "meshguard.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshguard
{{- end -}}

{{/* selectorLabels takes (dict "root" $ "component" "authz"). */}}
{{- define "meshguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshguard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "meshguard.controlplane" -}}{{ include "meshguard.fullname" . }}-controlplane{{- end -}}
{{- define "meshguard.authz" -}}{{ include "meshguard.fullname" . }}-authz{{- end -}}

{{/* podSecurity is the pod-level security context every pod gets. */}}
{{- define "meshguard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "meshguard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "meshguard.spiffeVolume" -}}
- name: spiffe-workload-api
  csi:
    driver: {{ .Values.spiffe.csiDriver }}
    readOnly: true
{{- end -}}

{{- define "meshguard.spiffeMount" -}}
- name: spiffe-workload-api
  mountPath: {{ .Values.spiffe.mountPath }}
  readOnly: true
{{- end -}}

{{- define "meshguard.spiffeEnv" -}}
- name: SPIFFE_ENDPOINT_SOCKET
  value: {{ printf "unix://%s/%s" .Values.spiffe.mountPath .Values.spiffe.socketName | quote }}
{{- end -}}

{{/* scrapeAnnotations takes (dict "root" $ "port" 9090). */}}
{{- define "meshguard.scrapeAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
