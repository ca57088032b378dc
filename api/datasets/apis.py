from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.datasets.examples import TASKS
from api.datasets.models import Dataset
from api.datasets.selectors import dataset_get, dataset_list
from api.datasets.services import dataset_create, dataset_delete
from api.pagination import paginated_response
from api.schema import page_parameters, paginated
from api.uploads import upload_size_check


class DatasetOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = ["id", "name", "task", "format", "filename", "sha256", "size_bytes", "base_model", "status",
                  "rows", "report", "created_at", "validated_at"]


class DatasetListCreateApi(APIView):
    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(help_text="JSONL, CSV or TSV")
        task = serializers.ChoiceField(choices=TASKS)
        name = serializers.CharField(max_length=200, required=False, default="")
        base_model = serializers.CharField(max_length=100, required=False, default="",
                                           help_text="tokenizer for the length stats (default: the deployment's)")

    @extend_schema(operation_id="datasets_list", responses=paginated(DatasetOutputSerializer),
                   parameters=page_parameters())
    def get(self, request: Request) -> Response:
        return paginated_response(queryset=dataset_list(user=request.user), serializer_class=DatasetOutputSerializer,
                                  request=request, view=self)

    @extend_schema(request=InputSerializer, responses={201: DatasetOutputSerializer})
    def post(self, request: Request) -> Response:
        upload_size_check(request, limit=settings.DATASET_MAX_BYTES, param="file")
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        dataset = dataset_create(user=request.user, upload=upload, filename=upload.name,
                                 task=data.validated_data["task"], name=data.validated_data["name"],
                                 base_model=data.validated_data["base_model"])
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema(responses=DatasetOutputSerializer)
    def get(self, request: Request, dataset_id: int) -> Response:
        return Response(DatasetOutputSerializer(dataset_get(user=request.user, dataset_id=dataset_id)).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, dataset_id: int) -> Response:
        dataset_delete(dataset=dataset_get(user=request.user, dataset_id=dataset_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
