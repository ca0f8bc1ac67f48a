{{/* The objects' base name: the release name when it already says picket. */}}
{{- define "picket.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "picket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the agent's pods (immutable in a DaemonSet: never change them). */}}
{{- define "picket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "picket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "picket.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "picket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "picket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "picket.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "picket.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* securityContext.appArmorProfile is a field from Kubernetes 1.30 on; before, an annotation. */}}
{{- define "picket.appArmorField" -}}
{{- semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- end -}}

{{/*
The container runtimes' metadata directories: a list of {name, host, mount} (mount is under
/host, where the agent's --host-root looks for the runtime's own path).
*/}}
{{- define "picket.runtimePaths" -}}
{{- $containerd := dict "name" "containerd" "host" "/run/containerd/io.containerd.runtime.v2.task" "mount" "/host/run/containerd/io.containerd.runtime.v2.task" -}}
{{- $crioRun := dict "name" "crio-run" "host" "/run/containers/storage/overlay-containers" "mount" "/host/run/containers/storage/overlay-containers" -}}
{{- $crioLib := dict "name" "crio-lib" "host" "/var/lib/containers/storage/overlay-containers" "mount" "/host/var/lib/containers/storage/overlay-containers" -}}
{{- $k3s := dict "name" "k3s-containerd" "host" "/run/k3s/containerd/io.containerd.runtime.v2.task" "mount" "/host/run/containerd/io.containerd.runtime.v2.task" -}}
{{- $runtime := .Values.containerRuntime -}}
{{- if eq $runtime "auto" -}}
{{- toYaml (list $containerd $crioRun $crioLib) -}}
{{- else if eq $runtime "containerd" -}}
{{- toYaml (list $containerd) -}}
{{- else if eq $runtime "crio" -}}
{{- toYaml (list $crioRun $crioLib) -}}
{{- else if eq $runtime "k3s" -}}
{{- toYaml (list $k3s) -}}
{{- else -}}
{{- fail (printf "containerRuntime: %q is not auto, containerd, crio or k3s" $runtime) -}}
{{- end -}}
{{- end -}}
